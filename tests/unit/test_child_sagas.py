"""Child sagas (``ChildSaga``), without a worker: the engine's moves run in-process, messages recorded (``sent``)."""
from datetime import timedelta

import pytest
from django.db.models.functions import Now

from sagas import (
    ChildSaga,
    InvalidTransition,
    Parallel,
    Saga,
    SagaDefinitionError,
    Step,
    cancel,
    complete_step,
    pause,
    registry,
    resume,
    retry_compensation,
    start_saga,
)
from sagas.engine import (
    Decision,
    PARENT_ONLY_MOVES,
    can_move_saga,
    child_ended,
    execute_compensation,
    execute_step,
    sweep,
)
from sagas.engine.core import locked_saga, move_saga
from sagas.models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import compensations_due, make_due
from tests.testapp.models import Call

NESTED = "tests.nested"  # a, ChildSaga child (tests.three_steps: a, b, c), c
CHILD_STEP = 1


def noop(ctx):
    return None


@pytest.fixture(autouse=True)
def sent_at_once(monkeypatch):
    """What the engine sends after commit is recorded when it is decided (these tests never commit)."""
    import types

    from django.db import transaction

    from sagas.engine import core

    monkeypatch.setattr(core, "transaction", types.SimpleNamespace(
        atomic=transaction.atomic, on_commit=lambda send, using=None, robust=False: send()))


def named(saga):
    """As a step's message names its saga (type and version): the one-statement claims may apply."""
    return {"saga_type": saga.saga_type, "version": saga.version}


def run(saga, *indices, expect=Decision.CONTINUE):
    for index in indices:
        outcome = execute_step(saga.id, index, **named(saga))
        assert outcome.decision is expect, (index, outcome)
    return outcome


def undo(saga, *indices):
    for index in indices:
        outcome = execute_compensation(saga.id, index, **named(saga))
    return outcome


def status(saga):
    return SagaInstance.objects.get(pk=saga.pk).status


def step(saga, name):
    return StepRecord.objects.get(saga=saga, name=name)


def the_child(parent):
    (child,) = SagaInstance.objects.filter(parent=parent)
    return child


def ends(sent):
    return [m for m in sent if m[0] == "child_ended"]


def deliver(sent):
    """Run the ``sagas.child_ended`` messages recorded so far, as the worker would."""
    messages = ends(sent)
    for message in messages:
        sent.remove(message)
    return [child_ended(parent_id, child_id) for _, parent_id, child_id in messages]


def started_parent(sent, saga_type=NESTED, **input):
    parent = start_saga(saga_type, input=input)
    run(parent, 0)
    outcome = run(parent, CHILD_STEP, expect=Decision.STOP)
    assert "waits for its child saga" in outcome.reason
    return parent, the_child(parent)


def succeed_child(child):
    run(child, 0, 1, 2)
    assert status(child) == SagaStatus.SUCCEEDED


# --- the definition --------------------------------------------------------------------------------


@pytest.mark.parametrize("child, message", [
    (ChildSaga("c", "no spaces allowed"), "saga_type 'no spaces allowed' is not a valid saga name"),
    (ChildSaga("c", "x.y", input={"a": 1}), "input must be a callable"),
    (ChildSaga("c", "x.y", version=0), "version must be an int >= 1"),
    (ChildSaga("c", "x.y", timeout=-1), "timeout must be a positive number"),
    (ChildSaga("c", "x.y", when=1), "when must be a callable"),
])
def test_a_bad_child_saga_is_refused_at_registration(child, message):
    with pytest.raises(SagaDefinitionError, match=message):
        registry.register(Saga(name="tests.bad_child", steps=[Step("a", noop), child]))
    assert "tests.bad_child" not in registry


def test_a_child_of_a_type_not_registered_yet_registers_and_is_described():
    saga = Saga(name="tests.later_child", steps=[
        Step("a", noop), Parallel("p", ChildSaga("c", "tests.not_yet", timeout=60), Step("d", noop))])
    saga.validate()
    described = saga.describe()["steps"]
    assert described[1]["child_saga"] == {"saga_type": "tests.not_yet", "version": None, "timeout": 60}
    assert described[1]["has_compensation"] is True  # undone by undoing its child
    assert described[0]["child_saga"] is None
    assert saga.step_at(1).timeout is None  # not an attempt's limit


def test_a_child_saga_may_follow_the_pivot():
    Saga(name="tests.pivot_child", steps=[Step("a", noop, pivot=True), ChildSaga("c", "x.y")]).validate()


# --- the state machine ---------------------------------------------------------------------------


def test_succeeded_to_compensating_is_a_move_only_a_parent_makes(db):
    assert PARENT_ONLY_MOVES == {(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING)}
    assert not can_move_saga(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING)
    assert can_move_saga(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING, by_parent=True)
    assert not can_move_saga(SagaStatus.COMPENSATED, SagaStatus.COMPENSATING, by_parent=True)


def test_a_root_saga_cannot_be_moved_as_a_child(db, sent):
    saga = start_saga("tests.three_steps")
    run(saga, 0, 1, 2)

    with pytest.raises(InvalidTransition, match="has no parent"):
        with locked_saga(saga.id) as locked:
            move_saga(locked, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING, by_parent=True)
    assert status(saga) == SagaStatus.SUCCEEDED


# --- start ---------------------------------------------------------------------------------------


def test_the_steps_turn_starts_the_child_and_the_step_waits_without_a_worker(db, sent):
    parent, child = started_parent(sent, child={"x": 1})

    record = step(parent, "child")
    assert (record.status, record.attempts, record.result) == (StepStatus.WAITING, 1, {"saga_id": str(child.pk)})
    assert (record.lease_expires_at, record.held_by) == (None, None)
    assert (child.parent_id, child.parent_step_id, child.depth) == (parent.pk, record.pk, 1)
    assert (child.saga_type, child.status, child.input) == ("tests.three_steps", SagaStatus.PENDING, {"x": 1})
    assert ("forward", child.id, 0) in sent  # sent once the claim commits
    waiting = parent.events.get(kind=EventKind.STEP_WAITING)
    assert waiting.detail["child_saga"] == str(child.pk) and waiting.detail["child_type"] == "tests.three_steps"
    assert child.events.get(kind=EventKind.SAGA_CREATED).detail["parent"] == str(parent.pk)


def test_a_redelivery_of_the_parents_step_never_starts_a_second_child(db, sent):
    parent, child = started_parent(sent)

    for _ in range(3):
        assert run(parent, CHILD_STEP, expect=Decision.STOP).reason == "step is waiting for a signal"

    assert list(SagaInstance.objects.filter(parent=parent)) == [child]
    assert step(parent, "child").attempts == 1


def test_a_signal_for_a_step_that_waits_for_its_child_is_refused(db, sent):
    parent, _ = started_parent(sent)

    with pytest.raises(InvalidTransition, match="waits for its child saga"):
        complete_step(parent, "child", result={"x": 1})
    assert step(parent, "child").status == StepStatus.WAITING


def test_a_child_of_an_unknown_type_fails_the_step_for_good_when_its_turn_comes(db, sent):
    parent = start_saga("tests.nested_unknown")
    run(parent, 0)

    run(parent, 1, expect=Decision.STOP)

    record = step(parent, "ghost")
    assert record.status == StepStatus.FAILED
    assert record.error == "its child saga cannot start: unknown saga type: 'tests.no_such_saga'"
    assert status(parent) == SagaStatus.COMPENSATING and compensations_due(parent) == [0]
    assert not SagaInstance.objects.filter(parent=parent).exists()


def test_nesting_deeper_than_the_limit_fails_the_step_for_good(db, sent, settings):
    settings.SAGAS_MAX_DEPTH = 1
    root = start_saga("tests.recursive")
    run(root, 0)
    run(root, 1, expect=Decision.STOP)
    child = the_child(root)
    run(child, 0)

    run(child, 1, expect=Decision.STOP)

    record = step(child, "deeper")
    assert record.status == StepStatus.FAILED
    assert "would nest 2 deep, deeper than SAGAS_MAX_DEPTH (1)" in record.error
    assert status(child) == SagaStatus.COMPENSATING
    assert not SagaInstance.objects.filter(parent=child).exists()


def test_a_child_sagas_false_condition_starts_no_child(db, sent):
    parent = start_saga("tests.conditional_child", input={"with_child": False})
    run(parent, 0)

    run(parent, 1)

    assert step(parent, "child").status == StepStatus.SKIPPED
    assert not SagaInstance.objects.filter(parent=parent).exists()


# --- the child's end ---------------------------------------------------------------------------------


def test_a_childs_success_succeeds_the_step_with_its_results_and_the_parent_goes_on(db, sent):
    parent, child = started_parent(sent)
    sent.clear()

    succeed_child(child)  # its last step, through the path a worker takes (one statement on PostgreSQL)

    assert ends(sent) == [("child_ended", parent.pk, child.pk)]  # told once the child's end commits
    assert step(parent, "child").status == StepStatus.WAITING  # no polling: nothing moves before the message
    assert deliver(sent) == ["moved"]
    record = step(parent, "child")
    child.refresh_from_db()
    assert record.status == StepStatus.SUCCEEDED
    assert record.result == {"saga_id": str(child.pk), "results": child.results}
    assert set(child.results) == {"a", "b", "c"}
    assert ("forward", parent.id, 2) in sent
    run(parent, 2)
    assert status(parent) == SagaStatus.SUCCEEDED


def test_a_repeated_end_message_changes_nothing(db, sent):
    parent, child = started_parent(sent)
    succeed_child(child)
    deliver(sent)
    events = parent.events.count()

    assert child_ended(parent.pk, child.pk) == "nothing to do"

    assert parent.events.count() == events


def test_a_compensated_child_fails_the_step_for_good_and_the_parent_compensates(db, sent):
    parent, child = started_parent(sent, child={"fail": {"b": "permanent"}})
    run(child, 0)
    run(child, 1, expect=Decision.STOP)
    undo(child, 0)  # the child is compensated: what it did is undone
    assert status(child) == SagaStatus.COMPENSATED

    deliver(sent)

    record = step(parent, "child")
    assert record.status == StepStatus.FAILED
    assert record.error.startswith(f"its child saga tests.three_steps {child.pk} was compensated: step b failed")
    assert not record.may_have_effects  # the child undid itself: nothing of it is left to undo
    assert status(parent) == SagaStatus.COMPENSATING
    assert compensations_due(parent) == [0]


def test_a_failed_child_holds_its_parent_until_a_person_retries_its_compensation(db, sent):
    parent, child = started_parent(sent, child={"fail": {"c": "permanent"}, "comp_fail": {"b": 2}})
    run(child, 0, 1)
    run(child, 2, expect=Decision.STOP)
    for _ in range(2):
        undo(child, 1)
    assert status(child) == SagaStatus.FAILED

    deliver(sent)

    assert step(parent, "child").status == StepStatus.WAITING  # a person must act on the child first
    assert status(parent) == SagaStatus.RUNNING
    held = parent.events.filter(kind=EventKind.STEP_WAITING).last()
    assert held.detail["child_status"] == "failed" and "a person resolves the child" in held.detail["note"]

    retry_compensation(child)
    undo(child, 1, 0)
    assert status(child) == SagaStatus.COMPENSATED
    deliver(sent)

    assert step(parent, "child").status == StepStatus.FAILED
    assert status(parent) == SagaStatus.COMPENSATING


# --- undoing a child ------------------------------------------------------------------------------------


def test_the_parent_failing_after_its_child_succeeded_undoes_the_child_as_a_whole(db, sent):
    parent, child = started_parent(sent, fail={"c": "permanent"})
    succeed_child(child)
    deliver(sent)
    run(parent, 2, expect=Decision.STOP)  # c refuses: the parent compensates
    assert compensations_due(parent) == [1, 0]
    sent.clear()

    outcome = undo(parent, 1)

    assert outcome.decision is Decision.STOP  # its compensation chain waits for the child
    assert step(parent, "child").status == StepStatus.COMPENSATING
    child.refresh_from_db()
    assert child.status == SagaStatus.COMPENSATING and child.finished_at is None
    moved = child.events.get(kind=EventKind.SAGA_COMPENSATING)
    assert (moved.detail["from"], moved.detail["to"]) == ("succeeded", "compensating")
    assert child.error == f"undone by its parent saga {parent.pk}"
    assert ("compensate", child.id, [2, 1, 0]) in sent
    assert undo(parent, 1).decision is Decision.STOP  # the sweeper's resend waits too, changing nothing
    assert step(parent, "child").compensation_attempts == 1

    undo(child, 2, 1, 0)
    assert status(child) == SagaStatus.COMPENSATED
    assert calls_of(child, "compensation") == ["c", "b", "a"]
    deliver(sent)

    assert step(parent, "child").status == StepStatus.COMPENSATED
    assert ("compensate", parent.id, [0]) in sent  # the rest of the parent's undoing
    undo(parent, 0)
    assert status(parent) == SagaStatus.COMPENSATED


def calls_of(saga, kind):
    return list(Call.objects.filter(saga_id=saga.pk, kind=kind).values_list("step", flat=True))


def test_a_child_whose_undoing_fails_makes_the_parents_compensation_fail_the_same_way(db, sent):
    parent, child = started_parent(sent, fail={"c": "permanent"}, child={"comp_fail": {"c": 2}})
    succeed_child(child)
    deliver(sent)
    run(parent, 2, expect=Decision.STOP)
    undo(parent, 1)
    for _ in range(2):
        undo(child, 2)
    assert status(child) == SagaStatus.FAILED

    deliver(sent)

    assert step(parent, "child").status == StepStatus.COMPENSATION_FAILED
    assert status(parent) == SagaStatus.FAILED
    assert f"child saga tests.three_steps {child.pk} failed" in SagaInstance.objects.get(pk=parent.pk).error

    retry_compensation(parent)  # reaches the child: its failed compensation is retried too

    assert status(child) == SagaStatus.COMPENSATING
    undo(child, 2, 1, 0)
    deliver(sent)
    undo(parent, 0)
    assert status(parent) == SagaStatus.COMPENSATED
    assert step(parent, "child").status == StepStatus.COMPENSATED


def test_a_person_resolving_the_failed_child_lets_the_parents_undoing_go_on(db, sent):
    parent, child = started_parent(sent, fail={"c": "permanent"}, child={"comp_fail": {"c": 2}})
    succeed_child(child)
    deliver(sent)
    run(parent, 2, expect=Decision.STOP)
    undo(parent, 1)
    for _ in range(2):
        undo(child, 2)
    deliver(sent)
    assert status(parent) == SagaStatus.FAILED

    retry_compensation(child)  # on the child, not the parent
    undo(child, 2, 1, 0)
    sent[:] = ends(sent)

    assert deliver(sent) == ["moved"]

    assert step(parent, "child").status == StepStatus.COMPENSATED
    assert status(parent) == SagaStatus.COMPENSATING
    assert ("compensate", parent.id, [0]) in sent


# --- down the tree: cancel, pause, resume ----------------------------------------------------------------


def test_cancelling_the_parent_cancels_its_running_child_and_undoes_both(db, sent):
    parent, child = started_parent(sent)
    run(child, 0)

    cancel(parent, reason="not needed")

    child.refresh_from_db()
    assert child.status == SagaStatus.COMPENSATING and child.cancel_requested_at is not None
    assert child.error.startswith(f"its parent saga {parent.pk} is compensating")
    record = step(parent, "child")
    assert record.status == StepStatus.FAILED and record.may_have_effects
    assert compensations_due(parent) == [1, 0]
    assert undo(parent, 1).decision is Decision.STOP  # waits for the child's undoing

    undo(child, 0)
    deliver(sent)

    assert step(parent, "child").status == StepStatus.COMPENSATED
    undo(parent, 0)
    assert status(parent) == SagaStatus.COMPENSATED


def test_pause_and_resume_of_a_parent_reach_its_running_child(db, sent):
    parent, child = started_parent(sent)
    run(child, 0)

    pause(parent, reason="audit")

    child.refresh_from_db()
    assert (child.status, child.paused_from, child.pause_cause) == (SagaStatus.PAUSED, SagaStatus.RUNNING, "parent")
    sent.clear()

    resume(parent)

    assert status(child) == SagaStatus.RUNNING
    assert ("forward", child.id, 1) in sent  # the child goes on from where it was


def test_a_parents_resume_leaves_a_child_a_person_paused_alone(db, sent):
    parent, child = started_parent(sent)
    pause(child, reason="checking by hand")
    pause(parent)

    resume(parent)

    assert status(child) == SagaStatus.PAUSED
    assert SagaInstance.objects.get(pk=child.pk).pause_cause == "person"


# --- deadlines and repairs ----------------------------------------------------------------------------


def test_a_child_that_does_not_end_in_time_is_cancelled_and_its_step_fails(db, sent):
    parent, child = started_parent(sent, "tests.nested_timeout")
    record = step(parent, "child")
    assert record.signal_deadline is not None
    StepRecord.objects.filter(pk=record.pk).update(signal_deadline=Now() - timedelta(seconds=1))

    report = sweep()

    assert report.waits_timed_out == 1
    record.refresh_from_db()
    assert record.status == StepStatus.FAILED
    assert record.error == "ChildSagaTimeout: its child saga did not end within 1s"
    assert status(child) == SagaStatus.COMPENSATED  # cancelled before any step ran: nothing to undo
    assert status(parent) == SagaStatus.COMPENSATING


def test_the_sweeper_moves_a_parent_whose_childs_end_message_was_lost(db, sent):
    parent, child = started_parent(sent)
    succeed_child(child)
    sent.clear()  # the message is lost
    make_due(parent)

    sweep()

    assert step(parent, "child").status == StepStatus.SUCCEEDED
    assert ("forward", parent.id, 2) in sent


def test_the_sweeper_moves_a_compensating_parent_whose_childs_end_message_was_lost(db, sent):
    parent, child = started_parent(sent, fail={"c": "permanent"})
    succeed_child(child)
    deliver(sent)
    run(parent, 2, expect=Decision.STOP)
    undo(parent, 1)
    undo(child, 2, 1, 0)
    sent.clear()  # the child's end message is lost
    make_due(parent)

    sweep()

    assert step(parent, "child").status == StepStatus.COMPENSATED
    assert ("compensate", parent.id, [0]) in sent


def test_a_parent_waiting_for_its_child_stays_due_every_stall_time(db, sent, settings):
    parent, child = started_parent(sent)
    make_due(parent)
    sent.clear()

    sweep()  # nothing has ended: nothing to send

    saga = SagaInstance.objects.get(pk=parent.pk)
    assert saga.due_at - saga.updated_at <= timedelta(seconds=settings.SAGAS_STALL_AFTER)
    assert not [m for m in sent if m[1] == parent.id and m[0] != "child_ended"]


def test_the_end_of_a_child_is_told_on_every_path_that_ends_it(db, sent):
    """The one-statement paths that end a saga (PostgreSQL) leave a child to the locked ones, which tell."""
    parent, child = started_parent(sent, fail={"c": "permanent"})
    sent.clear()
    succeed_child(child)
    assert ends(sent) == [("child_ended", parent.pk, child.pk)]
    deliver(sent)
    run(parent, 2, expect=Decision.STOP)
    undo(parent, 1)
    undo(child, 2, 1, 0)  # the last compensation ends it
    assert ends(sent) == [("child_ended", parent.pk, child.pk)]


# --- inside a Parallel --------------------------------------------------------------------------------


def test_a_child_inside_a_parallel_counts_for_the_join(db, sent):
    parent = start_saga("tests.nested_parallel")
    run(parent, 0)
    run(parent, 1, expect=Decision.STOP)
    run(parent, 2)  # b2
    child = the_child(parent)
    sent.clear()

    succeed_child(child)
    deliver(sent)

    assert step(parent, "kid").status == StepStatus.SUCCEEDED
    assert ("forward", parent.id, 3) in sent  # the join sends c
    run(parent, 3)
    assert status(parent) == SagaStatus.SUCCEEDED


# --- the admin: links both ways and the tree -------------------------------------------------------


def test_the_admin_links_a_child_to_its_parent_and_shows_the_parents_tree(admin_client, sent):
    from django.urls import reverse

    parent, child = started_parent(sent)

    parent_page = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[parent.pk])).content.decode()
    child_page = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[child.pk])).content.decode()

    child_url = reverse("admin:sagas_sagainstance_change", args=[child.pk])
    parent_url = reverse("admin:sagas_sagainstance_change", args=[parent.pk])
    assert 'class="saga-tree"' in parent_page and child_url in parent_page
    assert "tests.three_steps" in parent_page and "for child" in parent_page  # the step it works for
    assert parent_url in child_page and "(its step child)" in child_page


def test_the_admins_tree_shows_only_the_children_the_viewer_may_read(client, db, sent):
    from django.urls import reverse

    from sagas import registry
    from tests.helpers import saga_user

    parent, child = started_parent(sent)
    viewer = saga_user("viewer", ["view_sagainstance"], is_staff=True)
    client.force_login(viewer)
    definition = registry.get("tests.three_steps")
    original = definition.permission
    definition.permission = "testapp.change_call"  # the child's type now asks for a permission the viewer lacks
    try:
        page = client.get(reverse("admin:sagas_sagainstance_change", args=[parent.pk])).content.decode()
    finally:
        definition.permission = original

    assert "tests.nested" in page and "Child sagas" in page  # the parent's page, with its (empty) tree
    assert reverse("admin:sagas_sagainstance_change", args=[child.pk]) not in page
