"""Orders racing for scarce stock on two worker processes never oversell; hires racing for scarce laptops
never share one, before and after a person restocks the pool and resumes those that paused."""
import threading

import pytest

from corporate import fixtures, invariants, models, services
from corporate.fixtures import Inputs
from corporate.sagas import ORDER_FULFILLMENT
from sagas import resume, start_saga
from sagas.models import FINAL_SAGA_STATUSES, SagaStatus, StepRecord, StepStatus
from tests.helpers import answer_gate, wait_for_saga, wait_until
from tests.integration.conftest import QUEUE, start_worker

pytestmark = pytest.mark.integration

ORDERS = 50
STOCK = 20


class StockWatch(threading.Thread):
    """Samples the product's stock while the sagas run: the lowest value it ever saw."""

    def __init__(self, product_id: int):
        super().__init__(daemon=True)
        self.product_id = product_id
        self.lowest = STOCK
        self.samples = 0
        self.unbalanced = []
        self.stopped = threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopped.wait(0.05):
                on_hand, reserved, initial = models.Product.objects.values_list(
                    "on_hand", "reserved", "initial_stock").get(pk=self.product_id)
                if on_hand + reserved != initial:
                    self.unbalanced.append((on_hand, reserved, initial))
                self.lowest = min(self.lowest, on_hand)
                self.samples += 1
        finally:
            connection.close()


def test_fifty_orders_for_twenty_units_on_two_workers(worker, celery_worker_process):
    product = fixtures.product(stock=STOCK, price="10.00")
    customers = [fixtures.customer() for _ in range(5)]
    watch = StockWatch(product.pk)

    with start_worker(queue=QUEUE, concurrency=2) as second:
        watch.start()
        sagas = [start_saga(ORDER_FULFILLMENT, input=Inputs.order(customer_=customers[n % 5], product_=product))
                 for n in range(ORDERS)]
        finished = [wait_for_saga(s, timeout=240) for s in sagas]
        watch.stopped.set()
        watch.join()
        second_log = second["log"].read_text()

    statuses = [s.status for s in finished]
    assert statuses.count(SagaStatus.SUCCEEDED) == STOCK
    assert statuses.count(SagaStatus.COMPENSATED) == ORDERS - STOCK
    for saga in finished:
        if saga.status == SagaStatus.COMPENSATED:
            assert saga.steps.get(name="reserve_stock").status == StepStatus.FAILED
            assert "out of stock" in saga.error
    product.refresh_from_db()
    assert (product.on_hand, product.reserved, product.initial_stock) == (0, STOCK, STOCK)
    assert watch.samples > 0 and watch.lowest >= 0 and watch.unbalanced == []
    assert models.Payment.objects.count() == STOCK and models.Order.objects.count() == STOCK
    for name, passed, detail in invariants.check_all():
        assert passed, f"{name}: {detail}"
    # Both worker processes took part.
    assert "sagas.run_step" in second_log
    assert "sagas.run_step" in celery_worker_process["log"].read_text()


def test_hires_racing_for_three_laptops_never_share_one_and_the_rest_resume_once_the_pool_is_restocked(worker):
    fixtures.pools(laptops=3, desks=10)
    department = fixtures.department()

    with start_worker(queue=QUEUE, concurrency=2):
        sagas = [start_saga("corporate.employee_onboarding", input=Inputs.onboarding(department_=department),
                           version=5)  # IT after the signature (version 7 provisions before it, as a child)
                 for _ in range(8)]
        # Every hire waits for their signature; the service then calls back for all of them at once.
        contracts = wait_until(lambda: len(waiting := list(StepRecord.objects.filter(
            saga_id__in=[s.pk for s in sagas], name="contract_signature", status=StepStatus.WAITING))) == 8
            and waiting, timeout=60)
        for record in contracts:
            answer_gate(record, by=None)
        settled = [wait_for_saga(s, statuses=(SagaStatus.PAUSED, *FINAL_SAGA_STATUSES), timeout=120) for s in sagas]

        statuses = [s.status for s in settled]
        assert statuses.count(SagaStatus.SUCCEEDED) == 3
        assert statuses.count(SagaStatus.PAUSED) == 5  # past the signed contract: held for a person, not undone
        paused = [s for s in settled if s.status == SagaStatus.PAUSED]
        assert all("no laptop left" in s.steps.get(name="provision_it").error for s in paused)
        assert models.LaptopAssignment.objects.filter(returned_at__isnull=True).count() == 3
        for name, passed, detail in invariants.check_all():
            assert passed, f"{name}: {detail}"

        services.laptops_add(count=5, prefix="NEW")  # IT restocks the pool; the operator resumes them all at once
        for saga in paused:
            resume(saga)
        finished = [wait_for_saga(s, timeout=120) for s in paused]

    assert [s.status for s in finished] == [SagaStatus.SUCCEEDED] * 5
    assert models.LaptopAssignment.objects.filter(returned_at__isnull=True).count() == 8
    assert not models.LaptopAssignment.objects.filter(returned_at__isnull=False).exists()
    for name, passed, detail in invariants.check_all():
        assert passed, f"{name}: {detail}"
