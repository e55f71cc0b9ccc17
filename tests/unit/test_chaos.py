"""How saga_chaos judges a run: the effects its sagas leave, recovery and stand-still read from audit trails."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sagas import start_saga
from sagas.chaos import (
    CHAOS_SAGA,
    FANOUT_MEMBERS,
    FANOUT_SAGA,
    LONG_SAGA,
    NESTED_SAGA,
    Fault,
    StandStill,
    TrailEvent,
    check_effects,
    effect_problems,
    effects_left_behind,
    figures_by_kind,
    longest,
    measure_recoveries,
    measure_stand_stills,
    stand_still_figures,
)
from sagas.engine import execute_compensation, execute_step
from sagas.models import ChaosEffect, EventKind, SagaInstance, SagaStatus, StepStatus
from tests.helpers import compensations_due

# The saga types exist only where their command (or its setting) registers them.
pytestmark = pytest.mark.usefixtures("chaos_sagas")

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run_forward(saga, indices=(0, 1, 2, 3)):
    for index in indices:
        execute_step(saga.id, index)
    saga.refresh_from_db()
    return saga


def effects_of(saga) -> dict:
    return {e.step: e for e in ChaosEffect.objects.filter(saga_id=saga.id)}


# --- effects -------------------------------------------------------------------------


def test_a_succeeded_chaos_saga_leaves_each_effect_once(db, sent):
    saga = run_forward(start_saga(CHAOS_SAGA, input={"sleep": 0}))

    assert saga.status == SagaStatus.SUCCEEDED
    effects = effects_of(saga)
    assert sorted(effects) == ["s0", "s1a", "s1b", "s2"]
    assert all(e.applied == 1 and e.undone_at is None for e in effects.values())
    assert [e.step for e in effects.values() if e.transactional] == ["s1b"]
    assert effect_problems(saga, effects) == []
    assert all(check.passed for check in check_effects(SagaInstance.objects.filter(pk=saga.pk)))


def test_a_compensated_chaos_saga_undoes_every_effect_and_the_refusing_step_leaves_none(db, sent):
    saga = run_forward(start_saga(CHAOS_SAGA, input={"sleep": 0, "fail": "s2"}))
    for index in compensations_due(saga):
        execute_compensation(saga.id, index)
    saga.refresh_from_db()

    assert saga.status == SagaStatus.COMPENSATED
    effects = effects_of(saga)
    assert sorted(effects) == ["s0", "s1a", "s1b"]
    assert all(e.undone_at is not None for e in effects.values())
    assert effect_problems(saga, effects) == []


def test_a_refusing_transactional_step_leaves_no_effect(db, sent):
    saga = run_forward(start_saga(CHAOS_SAGA, input={"sleep": 0, "fail": "s1b"}), indices=(0, 1, 2))

    assert saga.steps.get(name="s1b").status == "failed"
    assert "s1b" not in effects_of(saga)


def test_an_idempotent_action_run_again_finds_its_effect_there(db, sent):
    from sagas.chaos import apply_effect
    from sagas.definitions import StepContext

    saga = start_saga(CHAOS_SAGA, input={"sleep": 0})
    ctx = StepContext(saga_id=saga.id, saga_type=CHAOS_SAGA, input={"sleep": 0}, results={}, step="s0",
                      attempt=1, idempotency_key=f"{saga.id}:s0")
    apply_effect(ctx)
    apply_effect(ctx)

    effect = ChaosEffect.objects.get(key=f"{saga.id}:s0")
    assert (effect.applied, effect.runs) == (1, 2)


def test_an_effect_applied_twice_is_reported(db, sent):
    saga = run_forward(start_saga(CHAOS_SAGA, input={"sleep": 0}))
    ChaosEffect.objects.filter(saga_id=saga.id, step="s1b").update(applied=2)

    checks = check_effects(SagaInstance.objects.filter(pk=saga.pk))

    assert [c.passed for c in checks] == [False, True]
    assert "s1b applied 2 times" in checks[0].detail


def test_a_missing_effect_after_success_is_reported(db, sent):
    saga = run_forward(start_saga(CHAOS_SAGA, input={"sleep": 0}))
    ChaosEffect.objects.filter(saga_id=saga.id, step="s1a").delete()

    checks = check_effects(SagaInstance.objects.filter(pk=saga.pk))

    assert [c.passed for c in checks] == [True, False]
    assert "s1a succeeded but its effect is missing" in checks[1].detail


def test_an_effect_left_in_place_after_compensation_is_reported(db, sent):
    saga = run_forward(start_saga(CHAOS_SAGA, input={"sleep": 0, "fail": "s2"}))
    for index in compensations_due(saga):
        execute_compensation(saga.id, index)
    ChaosEffect.objects.filter(saga_id=saga.id, step="s0").update(undone_at=None)

    checks = check_effects(SagaInstance.objects.filter(pk=saga.pk))

    assert [c.passed for c in checks] == [True, False]
    assert "s0 was compensated but its effect is still in place" in checks[1].detail


# --- recovery --------------------------------------------------------------------------


def test_recovery_is_the_time_from_the_fault_to_the_next_event_of_each_saga_in_flight():
    moving, stuck = uuid.uuid4(), uuid.uuid4()
    trails = {
        moving: [(at(0), EventKind.SAGA_CREATED), (at(9), EventKind.STEP_STARTED),
                 (at(11.5), EventKind.STEP_SUCCEEDED), (at(12), EventKind.SAGA_SUCCEEDED)],
        stuck: [(at(0), EventKind.SAGA_CREATED), (at(8), EventKind.STEP_STARTED),
                (at(320), EventKind.STEP_ATTEMPT_LOST)],
    }
    fault = Fault("whole worker", at(10))

    recoveries = {r.saga_id: r.seconds for r in measure_recoveries([fault], trails)}

    assert recoveries == {moving: 1.5, stuck: 310.0}


def test_sagas_finished_or_not_yet_created_at_a_fault_are_not_affected():
    finished, later = uuid.uuid4(), uuid.uuid4()
    trails = {
        finished: [(at(0), EventKind.SAGA_CREATED), (at(5), EventKind.SAGA_COMPENSATED)],
        later: [(at(20), EventKind.SAGA_CREATED), (at(21), EventKind.SAGA_STARTED)],
    }

    assert measure_recoveries([Fault("pool child", at(10))], trails) == []


def test_a_saga_with_no_event_after_the_fault_never_recovered():
    lost = uuid.uuid4()
    trails = {lost: [(at(0), EventKind.SAGA_CREATED), (at(1), EventKind.STEP_STARTED)]}
    fault = Fault("broker restart", at(2))

    [recovery] = measure_recoveries([fault], trails)

    assert recovery.seconds is None
    assert longest([recovery]) is recovery


def test_figures_by_kind_count_faults_affected_sagas_and_the_slowest():
    a, b = uuid.uuid4(), uuid.uuid4()
    trails = {
        a: [(at(0), EventKind.SAGA_CREATED), (at(13), EventKind.STEP_STARTED), (at(40), EventKind.SAGA_SUCCEEDED)],
        b: [(at(0), EventKind.SAGA_CREATED), (at(31), EventKind.STEP_STARTED)],
    }
    faults = [Fault("pool child", at(10)), Fault("pool child", at(30)), Fault("whole worker", at(35))]

    figures = {f.kind: f for f in figures_by_kind(faults, measure_recoveries(faults, trails),
                                                  ["pool child", "whole worker", "broker restart"])}

    assert (figures["pool child"].faults, figures["pool child"].affected) == (2, 4)
    assert figures["pool child"].max_seconds == 21.0  # b: from 10 s to its event at 31 s
    assert (figures["whole worker"].affected, figures["whole worker"].unrecovered) == (2, 1)
    assert figures["whole worker"].max_seconds == 5.0
    assert figures["broker restart"].faults == 0 and figures["broker restart"].max_seconds is None


def test_a_step_lost_before_it_applied_anything_may_be_compensated_without_an_effect(db):
    from sagas.chaos import effect_problems
    from sagas.models import SagaInstance, SagaStatus, StepRecord, StepStatus

    saga = SagaInstance.objects.create(saga_type="sagas.chaos", status=SagaStatus.COMPENSATED)
    StepRecord.objects.create(saga=saga, index=0, name="s0", status=StepStatus.COMPENSATED, may_have_effects=True)
    StepRecord.objects.create(saga=saga, index=1, name="s1a", status=StepStatus.COMPENSATED)

    problems = effect_problems(saga, {})

    assert [p.text for p in problems] == ["s1a was compensated but its effect never existed"]


# --- the fan-out and long-step sagas ---------------------------------------------------


def test_a_fanout_saga_whose_member_refuses_undoes_every_member_that_ran(db, sent):
    saga = start_saga(FANOUT_SAGA, input={"sleep": 0, "member_sleep": 0, "fail": "m05"})
    for index in range(0, 1 + len(FANOUT_MEMBERS)):  # f0 and the members, in order; m05 refuses
        execute_step(saga.id, index)
    for index in compensations_due(saga):
        execute_compensation(saga.id, index)
    saga.refresh_from_db()

    assert saga.status == SagaStatus.COMPENSATED
    effects = effects_of(saga)
    assert sorted(effects) == ["f0", *[m for m in FANOUT_MEMBERS[:5]]]
    assert all(e.undone_at is not None for e in effects.values())
    assert effect_problems(saga, effects) == []
    assert effects_left_behind(SagaInstance.objects.filter(pk=saga.pk)) == []


def test_a_fanout_saga_applies_one_effect_per_step_and_member(db, sent):
    saga = start_saga(FANOUT_SAGA, input={"sleep": 0, "member_sleep": 0})
    for index in range(len(FANOUT_MEMBERS) + 2):
        execute_step(saga.id, index)
    saga.refresh_from_db()

    assert saga.status == SagaStatus.SUCCEEDED
    assert len(effects_of(saga)) == len(FANOUT_MEMBERS) + 2
    assert all(check.passed for check in check_effects(SagaInstance.objects.filter(pk=saga.pk)))


def test_a_skipped_member_whose_effect_stays_is_an_effect_left_behind(db, sent):
    """What a member claimed while its sibling's failure was recorded leaves when it is skipped, not undone."""
    from sagas.models import StepRecord, StepStatus

    saga = SagaInstance.objects.create(saga_type=FANOUT_SAGA, status=SagaStatus.COMPENSATED)
    StepRecord.objects.create(saga=saga, index=1, name="m00", status=StepStatus.FAILED)
    StepRecord.objects.create(saga=saga, index=2, name="m01", status=StepStatus.SKIPPED)
    ChaosEffect.objects.create(key=f"{saga.id}:m01", saga_id=saga.id, step="m01", applied=1, runs=1)

    left = effects_left_behind(SagaInstance.objects.filter(pk=saga.pk))

    assert [e.step for e in left] == ["m01"]
    assert [p.text for p in effect_problems(saga, effects_of(saga))] == ["m01 is skipped but its effect is in place"]


def test_a_long_step_saga_runs_its_long_step_and_leaves_each_effect_once(db, sent):
    saga = run_forward(start_saga(LONG_SAGA, input={"sleep": 0, "long_seconds": 0.01}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert sorted(effects_of(saga)) == ["l0", "l2", "l3", "long"]
    assert effect_problems(saga, effects_of(saga)) == []


# --- stand-still -------------------------------------------------------------------------


def long_step_trail(after_success: float) -> list:
    """A long-step saga: its 40 s step succeeds at 41 s, and the next event comes ``after_success`` later."""
    nxt = 41 + after_success
    return [
        TrailEvent(at(0), EventKind.SAGA_CREATED),
        TrailEvent(at(0.2), EventKind.STEP_STARTED, 1),  # dated when the attempt began
        TrailEvent(at(0.2), EventKind.SAGA_STARTED),
        TrailEvent(at(1), EventKind.STEP_SUCCEEDED, 1),
        TrailEvent(at(1), EventKind.STEP_STARTED, 2),
        TrailEvent(at(41), EventKind.STEP_SUCCEEDED, 2),
        TrailEvent(at(nxt), EventKind.STEP_STARTED, 3),
        TrailEvent(at(nxt + 1), EventKind.STEP_SUCCEEDED, 3),
        TrailEvent(at(nxt + 1), EventKind.SAGA_SUCCEEDED),
    ]


def stand_still_of(trail, faults=(), ended=None, running_at_end=None) -> StandStill:
    saga_id = uuid.uuid4()
    [still] = measure_stand_stills({saga_id: trail}, list(faults), ended or at(1000), running_at_end)
    return still


def test_a_long_steps_own_work_is_not_standing_still():
    still = stand_still_of(long_step_trail(after_success=0.5))

    assert still.seconds == 0.5  # from the long step's success to the next step's start


def test_a_message_lost_after_a_long_step_stands_the_saga_still_until_it_moves_again():
    still = stand_still_of(long_step_trail(after_success=269))

    assert (still.seconds, still.start, still.end) == (269.0, at(41), at(310))


def test_an_attempt_stops_working_when_a_fault_kills_its_process():
    trail = [
        TrailEvent(at(0), EventKind.SAGA_CREATED),
        TrailEvent(at(1), EventKind.STEP_STARTED, 7),
        TrailEvent(at(24), EventKind.STEP_ATTEMPT_LOST, 7),  # the sweeper notices the dead worker
        TrailEvent(at(25), EventKind.STEP_STARTED, 7),
        TrailEvent(at(26), EventKind.STEP_SUCCEEDED, 7),
        TrailEvent(at(26), EventKind.SAGA_SUCCEEDED),
    ]
    killed = Fault("long-step kill", at(11), cut=frozenset({7}))
    elsewhere = Fault("pool child", at(5), cut=frozenset({8}))

    assert stand_still_of(trail, [elsewhere, killed]).seconds == 13.0  # from the kill at 11 s to the loss at 24 s
    assert stand_still_of(trail, [elsewhere]).seconds == 1.0  # no fault cut it: its whole span was work


def test_a_compensation_attempt_is_work_from_its_start_to_its_end():
    trail = [
        TrailEvent(at(0), EventKind.SAGA_CREATED),
        TrailEvent(at(0), EventKind.STEP_STARTED, 1),
        TrailEvent(at(2), EventKind.STEP_FAILED, 1),
        TrailEvent(at(2), EventKind.SAGA_COMPENSATING),
        TrailEvent(at(3), EventKind.COMPENSATION_STARTED, 0),  # written when it begins
        TrailEvent(at(20), EventKind.STEP_COMPENSATED, 0),
        TrailEvent(at(20), EventKind.SAGA_COMPENSATED),
        TrailEvent(at(90), EventKind.REPORT_DROPPED, 1),  # after its end: not part of its life
    ]

    assert stand_still_of(trail).seconds == 1.0


def test_an_unfinished_saga_stands_still_until_the_end_of_the_run_unless_a_live_attempt_works():
    trail = long_step_trail(after_success=0)[:6]  # the long step succeeded at 41 s, nothing since
    assert stand_still_of(trail, ended=at(100)).seconds == 59.0

    running = [*trail[:4]]  # the long step's attempt still runs at the end (its event not written yet)
    # only the 0.2 s its first message waited in the queue
    assert stand_still_of(running, ended=at(30), running_at_end={2: at(1)}).seconds == 0.2
    assert stand_still_of(running, ended=at(30)).seconds == 29.0


def test_stand_still_figures_give_the_longest_the_p95_and_how_many_are_over_the_limit():
    stills = [StandStill(uuid.uuid4(), float(s), None, None) for s in range(1, 21)]

    figures = stand_still_figures(stills, limit=18)

    assert (figures.sagas, figures.max_seconds, figures.over) == (20, 20.0, 2)
    assert round(figures.p95_seconds, 2) == 19.05
    assert figures.as_dict()["over_limit"] == 2


def test_a_saga_at_work_across_a_fault_that_did_not_touch_it_recovers_from_the_end_of_its_work():
    from datetime import datetime, timedelta, timezone

    from sagas.chaos import Fault, measure_recoveries

    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    fault = Fault("pool child", at(10))
    # A long step of its own ran from 5 s to 40 s (another process's), then it moved on at 40 s.
    trail = [(at(0), "saga_created"), (at(5), "step_started"), (at(40), "step_succeeded")]

    naive = measure_recoveries([fault], {"s": trail})
    knowing = measure_recoveries([fault], {"s": trail}, work={"s": [(at(5), at(40))]})

    assert naive[0].seconds == 30.0 and knowing[0].seconds == 0.0


# --- the nested workload ---------------------------------------------------------------


def test_a_nested_sagas_child_steps_apply_no_effect_of_their_own(db, sent):
    saga = start_saga(NESTED_SAGA, input={"sleep": 0})
    saga.steps.update(status=StepStatus.SUCCEEDED)
    SagaInstance.objects.filter(pk=saga.pk).update(status=SagaStatus.SUCCEEDED)
    saga.refresh_from_db()
    for step in ("n0", "n1b", "n2"):
        ChaosEffect.objects.create(key=f"{saga.pk}:{step}", saga_id=saga.pk, step=step, applied=1, runs=1)

    assert effect_problems(saga, effects_of(saga)) == []  # "child" and "child_a": their children's effects
    ChaosEffect.objects.filter(step="n1b").delete()
    assert [p.text for p in effect_problems(saga, effects_of(saga))] == ["n1b succeeded but its effect is missing"]


def child_wait_trail(child_ended: float, step_moved: float):
    """A parent whose step 5 waits for its child from 2 s; the child ends at ``child_ended``, the step moves at
    ``step_moved`` (later: the child's end message was lost, the sweeper looked)."""
    return [
        TrailEvent(at(0), EventKind.SAGA_CREATED),
        TrailEvent(at(0.2), EventKind.STEP_STARTED, 4),
        TrailEvent(at(1.5), EventKind.STEP_SUCCEEDED, 4),
        TrailEvent(at(2), EventKind.STEP_WAITING, 5, waits_for_child=True, child_ended=at(child_ended)),
        TrailEvent(at(step_moved), EventKind.STEP_SUCCEEDED, 5),
        TrailEvent(at(step_moved), EventKind.SAGA_SUCCEEDED),
    ]


def test_a_parent_waiting_for_its_working_child_is_not_standing_still():
    assert stand_still_of(child_wait_trail(child_ended=40, step_moved=40)).seconds == 0.5


def test_a_parent_whose_childs_end_message_was_lost_stands_still_from_the_childs_end():
    still = stand_still_of(child_wait_trail(child_ended=10, step_moved=35))

    assert (still.seconds, still.start, still.end) == (25.0, at(10), at(35))


def undone_child_trail():
    """A child saga that succeeded at 3 s and was undone by its parent from 20 s: its second compensation's
    attempt (from 21 s) lost at 35 s, taken over, done at 36 s."""
    return [
        TrailEvent(at(0), EventKind.SAGA_CREATED),
        TrailEvent(at(0.2), EventKind.STEP_STARTED, 1),
        TrailEvent(at(3), EventKind.STEP_SUCCEEDED, 1),
        TrailEvent(at(3), EventKind.SAGA_SUCCEEDED),
        TrailEvent(at(20), EventKind.SAGA_COMPENSATING),  # its parent undoes it: it lives again
        TrailEvent(at(20), EventKind.COMPENSATION_STARTED, 1),
        TrailEvent(at(35), EventKind.STEP_ATTEMPT_LOST, 1),
        TrailEvent(at(35.5), EventKind.COMPENSATION_STARTED, 1),
        TrailEvent(at(36), EventKind.STEP_COMPENSATED, 1),
        TrailEvent(at(36), EventKind.SAGA_COMPENSATED),
    ]


def test_a_child_undone_after_it_succeeded_lives_again_only_while_it_is_undone():
    # Between its success and its parent's undoing it is finished: not standing still.
    assert stand_still_of(undone_child_trail()).seconds == 0.5
    killed = Fault("whole worker", at(25), cut=frozenset({1}))
    still = stand_still_of(undone_child_trail(), [killed])
    assert (still.seconds, still.start, still.end) == (10.0, at(25), at(35))


def test_a_fault_while_a_child_is_undone_catches_it():
    trail = [(e.at, e.kind) for e in undone_child_trail()]
    saga_id = uuid.uuid4()
    between = Fault("pool child", at(10))
    during = Fault("pool child", at(30))

    assert measure_recoveries([between], {saga_id: trail}) == []  # finished then: not caught
    [caught] = measure_recoveries([during], {saga_id: trail})
    assert caught.seconds == 5.0  # to its next event, the lost attempt at 35 s
