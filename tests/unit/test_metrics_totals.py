"""The totals of folded sagas: a scrape shows what reading every row would, whatever was folded when."""
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from sagas import Retry, retry_compensation, start_saga
from sagas.engine import Decision, execute_compensation, execute_step
from sagas.metrics import totals
from sagas.metrics.figures import saga_figures, step_figures
from sagas.models import MetricTotal, SagaInstance, SagaStatus, StepRecord, StepStatus
from sagas.retention import prune_finished_sagas

NOW = timezone.now()


def every_row() -> Counter:
    """The figures as a scrape computed them before totals: from every saga and step record."""
    figures = saga_figures(SagaInstance.objects.all())
    figures.update(step_figures(list(SagaInstance.objects.values_list("pk", flat=True))))
    return figures


def rounded(figures: Counter) -> Counter:
    """Sums of seconds added and taken away again differ in their last bits only."""
    return Counter({key: round(value, 6) for key, value in figures.items() if round(value, 6)})


def saga(saga_type="shop.order", status=SagaStatus.SUCCEEDED, steps=(("charge", StepStatus.SUCCEEDED, 1, 0.3),),
         finished_ago=60):
    """A saga row with step records ``(name, status, attempts, seconds or None)``."""
    finished = NOW - timedelta(seconds=finished_ago) if status in (
        SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED) else None
    instance = SagaInstance.objects.create(saga_type=saga_type, status=status, finished_at=finished)
    for index, (name, step_status, attempts, seconds) in enumerate(steps):
        StepRecord.objects.create(
            saga=instance, index=index, name=name, status=step_status, attempts=attempts,
            started_at=NOW if attempts else None,
            finished_at=NOW + timedelta(seconds=seconds) if seconds is not None else None)
    return instance


def mixed_sagas():
    saga(steps=[("charge", StepStatus.SUCCEEDED, 2, 0.3), ("ship", StepStatus.SUCCEEDED, 1, 2.0)])
    saga(status=SagaStatus.COMPENSATED,
         steps=[("charge", StepStatus.COMPENSATED, 1, 0.2), ("ship", StepStatus.FAILED, 3, 40.0)])
    saga(status=SagaStatus.RUNNING, steps=[("charge", StepStatus.RUNNING, 1, None), ("ship", StepStatus.PENDING, 0, None)])
    saga("hr.hire", SagaStatus.FAILED, steps=[("open", StepStatus.COMPENSATION_FAILED, 1, 1.0)])


@pytest.mark.parametrize("fold", [totals.fold, totals.fold_everything], ids=["by batches", "in one pass"])
def test_a_fold_takes_every_finished_saga_and_leaves_the_figures_as_they_were(db, fold):
    mixed_sagas()
    before = every_row()

    assert fold() == 3

    assert rounded(totals.current()) == rounded(before)
    assert set(SagaInstance.objects.filter(metrics_folded=False).values_list("status", flat=True)) == {"running"}
    assert MetricTotal.objects.get(saga_type="hr.hire", step="", figure="failed").value == 1


@pytest.mark.parametrize("per_statement, joined_above", [(2, 100), (100, 2)],
                         ids=["looked up two sagas a statement", "one joined pass for a crowd"])
def test_many_unfolded_sagas_are_counted_as_a_few_are(db, monkeypatch, per_statement, joined_above):
    from sagas.metrics import figures

    mixed_sagas()
    saga(status=SagaStatus.RUNNING, steps=[("charge", StepStatus.WAITING, 1, 0.5)])
    expected = rounded(every_row())
    monkeypatch.setattr(figures, "CHUNK", per_statement)
    monkeypatch.setattr(totals, "CHUNK", joined_above)

    assert rounded(totals.current()) == expected


def test_a_backlog_is_folded_over_several_scrapes_and_counted_live_meanwhile(db, monkeypatch):
    monkeypatch.setattr(totals, "FOLD_BATCH", 3)
    for n in range(10):
        saga(f"type{n % 3}", finished_ago=n)

    assert totals.fold(batches=2) == 6
    assert rounded(totals.current()) == rounded(every_row())
    assert totals.fold(batches=2) == 4
    assert rounded(totals.current()) == rounded(every_row())
    assert not SagaInstance.objects.filter(metrics_folded=False).exists()


def test_a_saga_whose_compensation_is_retried_leaves_the_totals_until_it_ends_again(db, sent):
    instance = start_saga("tests.three_steps", input={"fail": {"b": "permanent"}, "comp_fail": {"a": 1}})
    execute_step(instance.id, 0)
    execute_step(instance.id, 1)  # b refuses: the saga compensates a
    assert execute_compensation(instance.id, 0, Retry(max_attempts=1)).decision is Decision.FAILED
    assert totals.fold() == 1
    failed = ("tests.three_steps", "", SagaStatus.FAILED)
    assert totals.current()[failed] == 1

    retry_compensation(instance)

    instance.refresh_from_db()
    assert instance.status == SagaStatus.COMPENSATING and not instance.metrics_folded
    assert rounded(totals.current()) == rounded(every_row())
    assert totals.current()[failed] == 0
    assert totals.current()[("tests.three_steps", "", SagaStatus.COMPENSATING)] == 1

    assert execute_compensation(instance.id, 0).decision is Decision.CONTINUE  # the second call succeeds
    instance.refresh_from_db()
    assert instance.status == SagaStatus.COMPENSATED
    assert totals.fold() == 1
    assert rounded(totals.current()) == rounded(every_row())
    assert totals.current()[("tests.three_steps", "", SagaStatus.COMPENSATED)] == 1


def test_a_child_undone_by_its_parent_leaves_the_totals_as_a_child_until_it_ends_again(db, sent):
    from sagas.engine import child_ended

    parent = start_saga("tests.nested", input={"fail": {"c": "permanent"}})
    execute_step(parent.id, 0)
    execute_step(parent.id, 1)  # starts the child
    child = SagaInstance.objects.get(parent=parent)
    for index in range(3):
        execute_step(child.id, index)
    assert child_ended(parent.id, child.id) == "moved"
    assert totals.fold() == 1
    succeeded = ("tests.three_steps", "", "child:succeeded")
    assert totals.current()[succeeded] == 1

    execute_step(parent.id, 2)  # c refuses: the parent undoes its child as a whole (succeeded -> compensating)
    assert execute_compensation(parent.id, 1).decision is Decision.STOP

    child.refresh_from_db()
    assert child.status == SagaStatus.COMPENSATING and not child.metrics_folded
    assert rounded(totals.current()) == rounded(every_row())
    assert totals.current()[succeeded] == 0
    assert totals.current()[("tests.three_steps", "", "child:compensating")] == 1
    assert totals.current()[("tests.three_steps", "", SagaStatus.SUCCEEDED)] == 0  # never counted as a root


def test_pruned_sagas_take_their_figures_out_of_the_totals(db):
    mixed_sagas()
    saga("old.type", finished_ago=30 * 24 * 3600)
    totals.fold()

    prune_finished_sagas(older_than=timedelta(days=7), now=NOW)

    assert not SagaInstance.objects.filter(saga_type="old.type").exists()
    assert rounded(totals.current()) == rounded(every_row())
    assert not any(saga_type == "old.type" for saga_type, _, _ in rounded(totals.current()))


def test_sagas_the_benchmark_removes_take_their_figures_out_of_the_totals(db):
    from sagas.bench.runs import delete_sagas

    mixed_sagas()
    gone = [saga("sagas.bench.p3").pk for _ in range(3)]
    totals.fold()

    delete_sagas(gone)

    assert rounded(totals.current()) == rounded(every_row())


def _in_a_thread(target, name: str) -> threading.Thread:
    def run():
        try:
            target()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_a_fold_committed_while_a_scrape_reads_is_counted_once(transactional_db):
    mixed_sagas()
    expected = rounded(every_row())
    folding = []

    def fold_once_the_totals_are_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not folding and "sagas_metrictotal" in sql:
            # Between the totals and the unfolded sagas, another process folds them all and
            # commits (on SQLite it waits for this transaction: the scrape holds the lock).
            folding.append(_in_a_thread(totals.fold, "fold"))
            folding[0].join(timeout=1)
        return result

    with connection.execute_wrapper(fold_once_the_totals_are_read):
        seen = totals.current()
    folding[0].join(timeout=30)

    assert not folding[0].is_alive()
    assert not SagaInstance.objects.filter(metrics_folded=False).exclude(status=SagaStatus.RUNNING).exists()
    assert rounded(seen) == expected
    assert rounded(totals.current()) == expected


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite runs one writing transaction at a time")
def test_two_folds_at_once_skip_each_others_sagas_and_fold_each_once(transactional_db, monkeypatch):
    monkeypatch.setattr(totals, "FOLD_BATCH", 10)
    for n in range(30):
        saga(f"type{n % 3}", finished_ago=n)
    expected = rounded(every_row())
    holding, release = threading.Event(), threading.Event()
    real = totals.step_figures

    def slow_in_first(steps):
        if threading.current_thread().name == "first":
            holding.set()
            release.wait(timeout=30)
        return real(steps)

    monkeypatch.setattr(totals, "step_figures", slow_in_first)
    first = _in_a_thread(lambda: totals.fold(batches=1), "first")  # locks 10 sagas, then waits
    assert holding.wait(timeout=30)
    second = _in_a_thread(totals.fold, "second")
    second.join(timeout=20)
    second_done = not second.is_alive()
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)

    assert second_done, "the second fold waited for the sagas the first one holds"
    assert not SagaInstance.objects.filter(metrics_folded=False).exists()
    monkeypatch.setattr(totals, "step_figures", real)
    assert rounded(totals.current()) == expected


def test_the_migration_folds_the_sagas_that_finished_before_it(transactional_db):
    from django.core.management import call_command
    from django.db.migrations.executor import MigrationExecutor

    before, latest = ("sagas", "0010_pause_and_pivot"), ("sagas", "0011_metric_totals")
    call_command("migrate", "sagas", before[1], verbosity=0)
    try:
        old = MigrationExecutor(connection).loader.project_state(before).apps
        Saga, Step = old.get_model("sagas", "SagaInstance"), old.get_model("sagas", "StepRecord")
        for status, step_status in [("succeeded", "succeeded"), ("compensated", "failed"), ("running", "running")]:
            row = Saga.objects.create(saga_type="shop.order", status=status, finished_at=NOW)
            Step.objects.create(saga=row, index=0, name="charge", status=step_status, attempts=2, started_at=NOW,
                                finished_at=None if status == "running" else NOW + timedelta(seconds=1))
    finally:
        call_command("migrate", "sagas", latest[1], verbosity=0)
        call_command("migrate", "sagas", verbosity=0)  # and the migrations after it, for the tests that follow

    assert sorted(SagaInstance.objects.values_list("status", "metrics_folded")) == [
        ("compensated", True), ("running", False), ("succeeded", True)]
    assert MetricTotal.objects.get(saga_type="shop.order", step="charge", figure="tried").value == 4
    assert rounded(totals.current()) == rounded(every_row())


def test_the_migration_moves_the_children_folded_before_it_to_their_own_figures(transactional_db):
    from django.core.management import call_command

    call_command("migrate", "sagas", "0014_child_sagas", verbosity=0)
    try:
        parent = saga("hr.onboarding", SagaStatus.RUNNING)
        for status in (SagaStatus.SUCCEEDED, SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED):
            SagaInstance.objects.create(saga_type="it.provisioning", status=status, parent=parent, depth=1,
                                        finished_at=NOW)
        saga("it.provisioning")  # a root of the same type
        # Folded as the code before it folded them: a child counted under its status, as a root.
        rows = list(SagaInstance.objects.filter(status__in=(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED))
                    .values_list("pk", "saga_type", "status"))
        totals.add(Counter((saga_type, "", status) for _, saga_type, status in rows))
        totals.add(step_figures([pk for pk, _, _ in rows]))
        SagaInstance.objects.filter(pk__in=[pk for pk, _, _ in rows]).update(metrics_folded=True)
    finally:
        call_command("migrate", "sagas", verbosity=0)

    assert rounded(totals.current()) == rounded(every_row())
    assert totals.current()[("it.provisioning", "", "child:succeeded")] == 2
    assert totals.current()[("it.provisioning", "", SagaStatus.SUCCEEDED)] == 1

    call_command("migrate", "sagas", "0014_child_sagas", verbosity=0)  # and back: all counted as roots again
    try:
        assert totals.current()[("it.provisioning", "", SagaStatus.SUCCEEDED)] == 3
        assert totals.current()[("it.provisioning", "", "child:succeeded")] == 0
    finally:
        call_command("migrate", "sagas", verbosity=0)
