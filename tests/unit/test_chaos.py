"""How saga_chaos judges a run: the effects its saga leaves, and recovery read from audit trails."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sagas import start_saga
from sagas.chaos import (
    CHAOS_SAGA,
    Fault,
    check_effects,
    effect_problems,
    figures_by_kind,
    longest,
    measure_recoveries,
)
from sagas.engine import execute_compensation, execute_step
from sagas.models import ChaosEffect, EventKind, SagaInstance, SagaStatus
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
