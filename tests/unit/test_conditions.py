"""Conditional steps (``when``), without a worker: asked at the step's claim, false skips it."""
import pytest

from sagas import Parallel, Saga, SagaDefinitionError, Step, registry, start_saga
from sagas.engine import Decision, execute_compensation, execute_step, sweep
from sagas.models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import compensations_due, make_due
from tests.testapp.models import Call

SAGA = "tests.conditional"  # a, b (when), Parallel p (when) of c (when) and d, e (when)


def noop(ctx):
    return {"ok": True}


@pytest.fixture(autouse=True)
def sent_at_once(monkeypatch):
    """What the engine sends after commit is recorded when it is decided (these tests never commit)."""
    import types

    from django.db import transaction

    from sagas.engine import core

    monkeypatch.setattr(core, "transaction", types.SimpleNamespace(
        atomic=transaction.atomic, on_commit=lambda send, using=None, robust=False: send()))


def statuses(saga):
    return list(StepRecord.objects.filter(saga=saga).order_by("index").values_list("status", flat=True))


def ran(saga):
    return list(Call.objects.filter(saga_id=saga.pk, kind="action").values_list("step", flat=True))


def named(saga):
    """Run a step the way its message names it (type and version: the one-statement claim may apply)."""
    definition = registry.get(saga.saga_type, saga.version)
    return {"saga_type": definition.name, "version": definition.version}


def run(saga, index):
    return execute_step(saga.id, index, **named(saga))


# --- registration ------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, message", [
    ([Step("a", noop, when=True)], "step 'a': when must be a callable"),
    ([Step("a", noop), Parallel("p", Step("b", noop), when="yes")], r"Parallel\('p'\): when must be a callable"),
])
def test_a_condition_that_is_not_callable_is_refused_at_registration(steps, message):
    with pytest.raises(SagaDefinitionError, match=message):
        registry.register(Saga(name="tests.bad_condition", steps=steps))
    assert "tests.bad_condition" not in registry


def test_conditions_are_described():
    described = registry.get(SAGA).describe()["steps"]
    assert [s["conditional"] for s in described] == [False, True, True, True, True]


# --- asked at the claim ----------------------------------------------------------------------------------


def test_a_condition_that_holds_runs_the_step(db, sent):
    saga = start_saga(SAGA, input={})
    run(saga, 0)

    assert run(saga, 1).decision is Decision.CONTINUE

    assert statuses(saga)[:2] == [StepStatus.SUCCEEDED, StepStatus.SUCCEEDED]
    assert ran(saga) == ["a", "b"]


def test_a_false_condition_skips_the_step_and_the_chain_goes_on(db, sent):
    saga = start_saga(SAGA, input={"skip": ["b"]})
    run(saga, 0)

    outcome = run(saga, 1)

    assert outcome.decision is Decision.CONTINUE  # its chain sends c and d next
    record = StepRecord.objects.get(saga=saga, name="b")
    assert (record.status, record.attempts, record.result) == (StepStatus.SKIPPED, 0, None)
    skipped = saga.events.get(kind=EventKind.STEP_SKIPPED, step=record)
    assert skipped.detail == {"from": "pending", "to": "skipped", "reason": "condition false"}
    assert ran(saga) == ["a"]  # never run


def test_a_condition_is_asked_with_the_context_the_action_would_get(db, sent):
    seen = []

    def when(ctx):
        seen.append(ctx)
        return False

    registry.register(Saga(name="tests.cond_seen", steps=[Step("a", noop), Step("b", noop, when=when)]))
    try:
        saga = start_saga("tests.cond_seen", input={"x": 1})
        run(saga, 0)
        run(saga, 1)
    finally:
        registry.unregister("tests.cond_seen")

    (ctx,) = seen
    assert (ctx.saga_id, ctx.step, ctx.attempt, ctx.input, ctx.results) == (saga.id, "b", 1, {"x": 1},
                                                                             {"a": {"ok": True}})
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.SUCCEEDED  # the last step skipped


def test_a_first_step_whose_condition_is_false_starts_the_saga_and_is_skipped(db, sent):
    registry.register(Saga(name="tests.cond_first", steps=[Step("a", noop, when=lambda ctx: False),
                                                           Step("b", noop)]))
    try:
        saga = start_saga("tests.cond_first")
        assert run(saga, 0).decision is Decision.CONTINUE
    finally:
        registry.unregister("tests.cond_first")

    saga.refresh_from_db()
    assert saga.status == SagaStatus.RUNNING and saga.started_at is not None
    assert statuses(saga) == [StepStatus.SKIPPED, StepStatus.PENDING]


def test_a_skipped_last_step_ends_the_saga_succeeded(db, sent):
    saga = start_saga(SAGA, input={"skip": ["e"]})
    for index in range(4):
        run(saga, index)
    sent.clear()

    assert run(saga, 4).decision is Decision.CONTINUE

    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED
    assert set(saga.results) == {"a", "b", "c", "d"}


def test_a_parallels_false_condition_skips_every_member_and_sends_the_next_stage(db, sent):
    saga = start_saga(SAGA, input={"skip": ["p"]})
    run(saga, 0)
    run(saga, 1)
    sent.clear()

    run(saga, 3)  # d's message comes first: it decides for the Parallel

    assert statuses(saga) == [StepStatus.SUCCEEDED, StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.SKIPPED,
                              StepStatus.PENDING]
    assert sent == [("forward", saga.id, 4)]  # the join: the next stage
    member = saga.events.get(kind=EventKind.STEP_SKIPPED, step__name="c")
    assert member.detail["reason"] == "condition false" and member.detail["parallel"] == "p"
    assert run(saga, 2).decision is Decision.STOP  # c's own message finds it skipped
    assert ran(saga) == ["a", "b"]


def test_a_skipped_member_counts_as_done_for_the_join(db, sent):
    saga = start_saga(SAGA, input={"skip": ["c"]})
    run(saga, 0)
    run(saga, 1)
    run(saga, 2)  # c: skipped
    sent.clear()
    assert statuses(saga)[2] == StepStatus.SKIPPED

    run(saga, 3)  # d succeeds: the stage is done

    assert sent == [("forward", saga.id, 4)]
    run(saga, 4)
    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED and ran(saga) == ["a", "b", "d", "e"]


def test_a_skipped_step_is_never_compensated(db, sent):
    saga = start_saga(SAGA, input={"skip": ["b"], "fail": {"d": "permanent"}})
    for index in range(4):
        run(saga, index)

    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATING
    assert compensations_due(saga) == [2, 0]  # c and a: not b
    for index in compensations_due(saga):
        assert execute_compensation(saga.id, index).decision is Decision.CONTINUE
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED
    assert statuses(saga)[1] == StepStatus.SKIPPED


def test_a_condition_that_raises_fails_the_step_for_good_and_the_saga_compensates(db, sent):
    saga = start_saga(SAGA, input={"broken": "b"})
    run(saga, 0)

    outcome = run(saga, 1)

    assert outcome.decision is Decision.STOP
    record = StepRecord.objects.get(saga=saga, name="b")
    assert record.status == StepStatus.FAILED and record.attempts == 1
    assert record.error == "its condition (when) raised ValueError: cannot decide b"
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATING
    assert "condition (when) raised" in saga.error
    assert compensations_due(saga) == [0]
    assert ran(saga) == ["a"]


def test_a_lost_message_after_a_skipped_member_sends_only_the_members_left(db, sent):
    saga = start_saga(SAGA, input={"skip": ["c"]})
    run(saga, 0)
    run(saga, 1)
    run(saga, 2)  # c skipped; d's message is lost
    sent.clear()
    make_due(saga)

    sweep()

    assert sent == [("steps", saga.id, [3])]


def test_the_sweeper_resends_a_conditional_step_and_its_claim_asks_the_condition(db, sent):
    saga = start_saga(SAGA, input={"skip": ["b"]})
    run(saga, 0)  # b's message is lost
    sent.clear()
    make_due(saga)

    sweep()

    assert sent == [("forward", saga.id, 1)]
    assert run(saga, 1).decision is Decision.CONTINUE
    assert statuses(saga)[1] == StepStatus.SKIPPED
