"""Pruning old finished sagas: ``sagas.retention`` and the ``saga_prune`` command."""
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from sagas.retention import prune_finished_sagas

NOW = timezone.now()
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=2)


def saga(status=SagaStatus.SUCCEEDED, finished=OLD, **fields) -> SagaInstance:
    """A saga row with two steps and three events (one per step, one for the saga)."""
    instance = SagaInstance.objects.create(saga_type="shop.order", status=status, finished_at=finished, **fields)
    SagaInstance.objects.filter(pk=instance.pk).update(created_at=(finished or OLD) - timedelta(minutes=1))
    SagaEvent.objects.create(saga=instance, kind=EventKind.SAGA_CREATED)
    for index, name in enumerate("ab"):
        step = StepRecord.objects.create(saga=instance, index=index, name=name, status=StepStatus.SUCCEEDED)
        SagaEvent.objects.create(saga=instance, step=step, kind=EventKind.STEP_SUCCEEDED)
    return instance


def remaining() -> set:
    return set(SagaInstance.objects.values_list("pk", flat=True))


def test_only_finished_sagas_older_than_the_cutoff_go_with_their_steps_and_events(db):
    old_ok, old_undone = saga(SagaStatus.SUCCEEDED), saga(SagaStatus.COMPENSATED)
    recent = saga(SagaStatus.SUCCEEDED, finished=RECENT)

    report = prune_finished_sagas(older_than=timedelta(days=30))

    assert remaining() == {recent.pk}
    assert not StepRecord.objects.filter(saga__in=[old_ok.pk, old_undone.pk]).exists()
    assert not SagaEvent.objects.filter(saga__in=[old_ok.pk, old_undone.pk]).exists()
    assert report.sagas == {SagaStatus.SUCCEEDED: 1, SagaStatus.COMPENSATED: 1}
    assert (report.steps, report.events) == (4, 6)


@pytest.mark.parametrize("status", [SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING])
def test_active_sagas_stay_whatever_their_age(db, status):
    active = saga(status, finished=None)
    odd = saga(status, finished=OLD)  # an active saga never has finished_at; even if it had, it stays

    report = prune_finished_sagas(older_than=timedelta(0), include_failed=True)

    assert remaining() == {active.pk, odd.pk}
    assert report.total_sagas == 0 and StepRecord.objects.count() == 4


def test_a_child_stays_while_a_saga_above_it_is_active(db):
    root = saga(SagaStatus.RUNNING, finished=None)
    child = saga(SagaStatus.SUCCEEDED, parent=root, depth=1)
    grandchild = saga(SagaStatus.SUCCEEDED, parent=child, depth=2)  # its own parent finished, its root did not
    done = saga(SagaStatus.SUCCEEDED)
    done_child = saga(SagaStatus.COMPENSATED, parent=done, depth=1)

    report = prune_finished_sagas(older_than=timedelta(days=30))

    assert remaining() == {root.pk, child.pk, grandchild.pk}
    assert report.sagas == {SagaStatus.SUCCEEDED: 1, SagaStatus.COMPENSATED: 1}
    assert not SagaInstance.objects.filter(pk__in=[done.pk, done_child.pk]).exists()


def test_failed_sagas_stay_unless_included(db):
    failed = saga(SagaStatus.FAILED)

    kept = prune_finished_sagas(older_than=timedelta(days=30))
    assert remaining() == {failed.pk} and SagaStatus.FAILED not in kept.sagas

    removed = prune_finished_sagas(older_than=timedelta(days=30), include_failed=True)
    assert remaining() == set() and removed.sagas[SagaStatus.FAILED] == 1


def test_dry_run_counts_what_would_go_and_removes_nothing(db):
    saga(SagaStatus.SUCCEEDED)
    saga(SagaStatus.SUCCEEDED, finished=RECENT)

    report = prune_finished_sagas(older_than=timedelta(days=30), dry_run=True)

    assert report.dry_run and report.sagas[SagaStatus.SUCCEEDED] == 1 and (report.steps, report.events) == (2, 3)
    assert SagaInstance.objects.count() == 2 and StepRecord.objects.count() == 4 and SagaEvent.objects.count() == 6


def test_rows_go_in_batches(db):
    for _ in range(5):
        saga()

    report = prune_finished_sagas(older_than=timedelta(days=30), batch_size=2)

    assert report.batches == 3 and report.total_sagas == 5 and remaining() == set()


def test_a_resubmission_of_a_removed_saga_stays_unlinked(db):
    original = saga(SagaStatus.COMPENSATED)
    again = saga(SagaStatus.SUCCEEDED, finished=RECENT, resubmitted_from=original)

    prune_finished_sagas(older_than=timedelta(days=30))

    again.refresh_from_db()
    assert remaining() == {again.pk} and again.resubmitted_from is None


@pytest.mark.parametrize("bad", [{"older_than": timedelta(days=-1)}, {"batch_size": 0}])
def test_service_refuses_negative_age_or_empty_batches(db, bad):
    with pytest.raises(ValueError):
        prune_finished_sagas(**{"older_than": timedelta(days=1), **bad})


# --- the command -------------------------------------------------------------------------


def prune(*args: str) -> str:
    out = StringIO()
    call_command("saga_prune", *args, stdout=out)
    return out.getvalue()


def test_command_prints_what_it_removed(db):
    saga(SagaStatus.SUCCEEDED)
    saga(SagaStatus.COMPENSATED)
    saga(SagaStatus.FAILED)

    output = prune("--older-than", "30", "--batch-size", "1")

    assert "removed 2 sagas finished before" in output
    assert "(1 succeeded, 1 compensated), 4 step records, 6 events in 2 batches" in output
    assert SagaInstance.objects.filter(status=SagaStatus.FAILED).count() == 1


def test_command_dry_run_says_so_and_removes_nothing(db):
    saga(SagaStatus.FAILED)

    output = prune("--older-than", "0.5", "--dry-run", "--include-failed")

    assert "would remove 1 sagas" in output and "1 failed" in output and "dry run: nothing removed" in output
    assert SagaInstance.objects.count() == 1


@pytest.mark.parametrize("args, message", [
    (["--older-than", "-3"], "--older-than must be 0 or more"),
    (["--older-than", "ten"], "--older-than must be a number, not 'ten'"),
    (["--older-than", "nan"], "--older-than must be 0 or more"),
    (["--older-than", "30", "--batch-size", "0"], "--batch-size must be 1 or more"),
    (["--older-than", "30", "--batch-size", "2.5"], "--batch-size must be a whole number"),
])
def test_command_refuses_bad_input_readably_and_changes_nothing(db, args, message):
    saga(SagaStatus.SUCCEEDED)

    with pytest.raises(CommandError, match=message):
        prune(*args)

    assert SagaInstance.objects.count() == 1
