import time

from sagas.models import FINAL_SAGA_STATUSES, SagaInstance


def wait_for_saga(saga, statuses=FINAL_SAGA_STATUSES, timeout: float = 60.0) -> SagaInstance:
    """Poll the database until the saga reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        saga = SagaInstance.objects.get(pk=saga.pk)
        if saga.status in statuses:
            return saga
        if time.monotonic() > deadline:
            steps = list(saga.steps.values_list("name", "status", "attempts"))
            raise AssertionError(f"saga {saga.id} still {saga.status} after {timeout}s; steps {steps}")
        time.sleep(0.1)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def make_due(saga) -> None:
    """As if the saga's due time had passed: what the sweeper looks for."""
    from django.db.models.functions import Now

    SagaInstance.objects.filter(pk=saga.pk).update(due_at=Now())


def compensations_due(saga) -> list[int]:
    """The compensations the engine's chain visits for ``saga`` now, latest step first.

    A step that fails for good starts the compensation in the transaction
    that records it; unit tests without a broker run that chain by hand.
    """
    from sagas.engine.compensation import compensation_order
    from sagas.models import StepRecord

    return compensation_order(list(StepRecord.objects.filter(saga_id=saga.pk).order_by("index")))
