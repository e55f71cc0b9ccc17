"""Pairs of engine transitions interleaved at every statement boundary (``tests/interleaving.py``).

Each scenario brings a saga whose steps leave real effects (``ChaosEffect``
rows) to a state, runs two transitions from it under every schedule the
harness makes (the first stopped before each of its statements in turn, the
second run there), settles the saga as workers and the sweeper would, and
checks what defines correctness: a step whose action ran is undone or its
saga succeeded, no step is skipped after an attempt, an accepted cancel
never ends succeeded, a Parallel joins once, nothing finished holds a lease.

On PostgreSQL each scenario runs twice: with messages that name the saga's
type and version (the one-statement paths) and without (the locked paths),
and the final rows of the two serial runs must be the same (a differential
check of the SQL forms of the state machine against its Python forms).
"""
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from sagas import cancel, complete_step, registry, start_saga
from sagas import engine
from sagas.chaos import apply_effect
from sagas.engine import Report, complete_step_by_token
from sagas.models import SagaInstance, StepRecord
from tests import interleaving
from tests.interleaving import Scenario, explore

LINE = "tests.effects_line"  # a -> b -> c
FANOUT = "tests.effects_fanout"  # a -> Parallel(b1..b4) -> c
FIRST_FANOUT = "tests.effects_first_fanout"  # Parallel(b1..b3) -> c
GATED = "tests.effects_gated"  # a -> gate (waits for a signal) -> c

NAMINGS = [True, False] if connection.vendor == "postgresql" else [True]


def _step(saga_type, index, *, named=True):
    definition = registry.get(saga_type)
    names = {"saga_type": definition.name, "version": definition.version} if named else {}
    return lambda saga_id: lambda: engine.execute_step(saga_id, index, **names)


def _cancel(saga_id):
    return lambda: cancel(saga_id, reason="stop")


def _fanout_after_a(fail=None, *, saga_type=FANOUT):
    def prepare(sent):
        saga = start_saga(saga_type, input={"fail": fail} if fail else {})
        if saga_type == FANOUT:
            engine.execute_step(saga.id, 0)
        sent.clear()
        return saga.id
    return prepare


def _others_on_their_way(prepare, indices):
    """``prepare``, with the deliveries of ``indices`` (the rest of a Parallel's group) still to come."""
    def with_messages(sent):
        saga_id = prepare(sent)
        sent.append(("steps", saga_id, indices))
        return saga_id
    return with_messages


def _assert_none(failures):
    assert not failures, "\n".join(f"{order} at statement {k}: {found}" for order, k, found in failures)


@pytest.mark.parametrize("named", NAMINGS, ids=lambda n: "one-statement paths" if n else "locked paths")
def test_a_member_failing_for_good_while_a_sibling_is_claimed_leaves_no_effect_in_place(
        transactional_db, sent, named):
    scenario = Scenario(
        "b1 refuses while b2 is delivered",
        _others_on_their_way(_fanout_after_a(fail="b1"), [3, 4]),
        _step(FANOUT, 1, named=named), _step(FANOUT, 2, named=named))

    _assert_none(explore(scenario, sent, registry.get(FANOUT), named=named))


@pytest.mark.parametrize("named", NAMINGS, ids=lambda n: "one-statement paths" if n else "locked paths")
def test_a_member_failing_for_good_while_a_cancel_arrives_leaves_no_effect_in_place(transactional_db, sent, named):
    scenario = Scenario(
        "b1 refuses while the saga is cancelled",
        _others_on_their_way(_fanout_after_a(fail="b1"), [2, 3, 4]),
        _step(FANOUT, 1, named=named), lambda saga_id: _cancel(saga_id))

    _assert_none(explore(scenario, sent, registry.get(FANOUT), named=named))


def test_a_first_stage_member_failing_while_a_cancel_arrives_neither_deadlocks_nor_leaves_effects(
        transactional_db, sent):
    scenario = Scenario(
        "first-stage b1 refuses while the saga is cancelled",
        _others_on_their_way(_fanout_after_a(fail="b1", saga_type=FIRST_FANOUT), [1, 2]),
        _step(FIRST_FANOUT, 0), lambda saga_id: _cancel(saga_id))

    _assert_none(explore(scenario, sent, registry.get(FIRST_FANOUT)))


# --- a plain line: the last step's success, a redelivery, the sweeper ----------------------------------


def _line_at(index, fail=None):
    """A line saga whose steps before ``index`` succeeded."""
    def prepare(sent):
        saga = start_saga(LINE, input={"fail": fail} if fail else {})
        for earlier in range(index):
            engine.execute_step(saga.id, earlier)
        sent.clear()
        return saga.id
    return prepare


@pytest.mark.parametrize("named", NAMINGS, ids=lambda n: "one-statement paths" if n else "locked paths")
def test_the_last_step_delivered_while_a_cancel_arrives_ends_one_way_with_nothing_left(transactional_db, sent,
                                                                                        named):
    scenario = Scenario("c delivered while cancelled", _line_at(2), _step(LINE, 2, named=named),
                        lambda saga_id: _cancel(saga_id))

    _assert_none(explore(scenario, sent, registry.get(LINE), named=named))


@pytest.mark.parametrize("named", NAMINGS, ids=lambda n: "one-statement paths" if n else "locked paths")
def test_two_deliveries_of_one_step_at_once_run_its_action_once(transactional_db, sent, named):
    scenario = Scenario("b delivered twice", _line_at(1), _step(LINE, 1, named=named), _step(LINE, 1, named=named))

    _assert_none(explore(scenario, sent, registry.get(LINE), named=named, check=_applied_once))


def _applied_once(saga_id, run):
    from sagas.models import ChaosEffect

    twice = [e.step for e in ChaosEffect.objects.filter(saga_id=saga_id) if e.runs > 1]
    return [f"actions run twice: {twice}"] if twice else []


def _due(prepare):
    def due_now(sent):
        saga_id = prepare(sent)
        SagaInstance.objects.filter(pk=saga_id).update(due_at=Now())
        return saga_id
    return due_now


def _sweep(saga_id):
    return lambda: engine.sweep()


def test_a_step_delivered_while_the_sweeper_resends_it_runs_once(transactional_db, sent):
    scenario = Scenario("b delivered while swept", _due(_line_at(1)), _step(LINE, 1), _sweep)

    _assert_none(explore(scenario, sent, registry.get(LINE), check=_applied_once))


def test_a_compensation_delivered_twice_at_once_undoes_once(transactional_db, sent):
    def compensating(sent):
        saga_id = _line_at(2, fail="c")(sent)
        engine.execute_step(saga_id, 2)  # c refuses: the compensation of b, then a, is sent
        sent.clear()
        return saga_id

    def compensate_b(saga_id):
        definition = registry.get(LINE)
        return lambda: engine.execute_compensation(saga_id, 1, saga_type=definition.name, version=definition.version)

    def settled_with_one_undo(saga_id, run):
        from sagas.models import ChaosEffect

        twice = [e.step for e in ChaosEffect.objects.filter(saga_id=saga_id) if e.undo_runs > 1]
        return [f"compensations run twice: {twice}"] if twice else []

    scenario = Scenario("b's compensation twice", _with_compensation_of_a_to_come(compensating), compensate_b,
                        compensate_b)

    _assert_none(explore(scenario, sent, registry.get(LINE), check=settled_with_one_undo))


def _with_compensation_of_a_to_come(prepare):
    def with_message(sent):
        saga_id = prepare(sent)
        sent.append(("compensate", saga_id, [0]))
        return saga_id
    return with_message


# --- a Parallel's join --------------------------------------------------------------------------------


def test_the_last_two_members_succeeding_at_once_join_exactly_once(transactional_db, sent):
    def two_left(sent):
        saga_id = _fanout_after_a()(sent)
        for index in (1, 2):
            engine.execute_step(saga_id, index)
        sent.clear()
        return saga_id

    scenario = Scenario("b3 and b4 succeed at once", two_left, _step(FANOUT, 3), _step(FANOUT, 4))

    _assert_none(explore(scenario, sent, registry.get(FANOUT)))


# --- waiting steps: a token callback, a person's signal, a deadline -----------------------------------------

_CLAIMS = {}


def _gate_at_work(sent):
    """The gate's action ran (its effect applied) and is about to report; its token is out."""
    saga = start_saga(GATED, input={})
    engine.execute_step(saga.id, 0)
    claim = engine.claim_step(saga.id, 1, None)
    _CLAIMS[saga.id] = (claim, apply_effect(claim.context))
    sent.clear()
    return saga.id


def _gate_reports(saga_id):
    claim, output = _CLAIMS[saga_id]
    return lambda: engine.record_step(saga_id, 1, Report(claim.attempt, ok=True, result=output), None, claim=claim)


def _token_completes(saga_id):
    claim, _ = _CLAIMS[saga_id]
    return lambda: complete_step_by_token(claim.context.signal_token, result={"signed": True})


def _signed(saga_id, run):
    gate = StepRecord.objects.get(saga_id=saga_id, name="gate")
    return [] if gate.result and gate.result.get("signed") else [f"the signer's answer was lost: {gate.status}"]


def test_a_token_callback_racing_the_actions_report_is_never_lost(transactional_db, sent):
    scenario = Scenario("the token callback while the gate's action reports", _gate_at_work, _gate_reports,
                        _token_completes)

    _assert_none(explore(scenario, sent, registry.get(GATED), check=_signed))


def _waiting_past_deadline(sent):
    saga = start_saga(GATED, input={})
    engine.execute_step(saga.id, 0)
    engine.execute_step(saga.id, 1)
    StepRecord.objects.filter(saga=saga, name="gate").update(signal_deadline=Now() - timedelta(seconds=1))
    sent.clear()
    return saga.id


def _signal(saga_id):
    return lambda: complete_step(saga_id, "gate", result={"approved": True})


def test_a_signal_racing_its_deadline_ends_the_wait_one_way(transactional_db, sent):
    scenario = Scenario("the approval while the deadline expires", _waiting_past_deadline, _signal, _sweep)

    _assert_none(explore(scenario, sent, registry.get(GATED)))


def test_a_cancel_racing_a_signal_never_ends_succeeded(transactional_db, sent):
    def waiting(sent):
        saga = start_saga(GATED, input={})
        engine.execute_step(saga.id, 0)
        engine.execute_step(saga.id, 1)
        sent.clear()
        return saga.id

    scenario = Scenario("the approval while cancelled", waiting, _signal, lambda saga_id: _cancel(saga_id))

    _assert_none(explore(scenario, sent, registry.get(GATED)))


# --- a lost attempt --------------------------------------------------------------------------------------


def test_a_lost_attempt_taken_over_by_a_redelivery_and_the_sweeper_at_once_is_undone_or_finished(
        transactional_db, sent):
    def lost(sent):
        saga_id = _line_at(1, fail="b")(sent)  # every attempt of b that reports refuses
        claim = engine.claim_step(saga_id, 1, None)
        apply_effect_anyway(claim)
        interleaving.lose_attempts(saga_id)
        SagaInstance.objects.filter(pk=saga_id).update(due_at=Now())
        return saga_id

    scenario = Scenario("b lost: redelivered while swept", lost, _step(LINE, 1), _sweep)

    _assert_none(explore(scenario, sent, registry.get(LINE)))


def apply_effect_anyway(claim):
    """What a lost attempt of a refusing step did before its worker died: its effect, without refusing."""
    from sagas.models import ChaosEffect

    ChaosEffect.objects.create(key=claim.context.idempotency_key, saga_id=claim.saga_id, step=claim.step.name,
                               applied=1, runs=1)


# --- differential: the one-statement paths and the locked paths end in the same rows ------------------------


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement paths are PostgreSQL's")
@pytest.mark.parametrize("case", ["line succeeds", "last step refuses", "member refuses", "cancelled at b"])
def test_the_one_statement_and_the_locked_paths_leave_the_same_rows(transactional_db, sent, case):
    saga_type, fail, cancel_at = {
        "line succeeds": (LINE, None, None), "last step refuses": (LINE, "c", None),
        "member refuses": (FANOUT, "b2", None), "cancelled at b": (LINE, None, 1)}[case]
    definition = registry.get(saga_type)
    finals = []
    for named in (True, False):
        sent.clear()
        saga = start_saga(saga_type, input={"fail": fail} if fail else {})
        if cancel_at is not None:
            for earlier in range(cancel_at):
                engine.execute_step(saga.id, earlier, **({"saga_type": saga_type, "version": 1} if named else {}))
            sent.clear()
            cancel(saga.id, reason="stop")
        interleaving.settle(saga.id, sent, definition, named=named)
        finals.append(interleaving.rows(saga.id))

    assert finals[0] == finals[1]


# --- a pause (and the resume after it) against a step at work -------------------------------------------


def _pause_and_resume(saga_id):
    """A person pauses the saga and, a moment later, resumes it: nothing may be lost or done twice meanwhile."""
    from sagas import pause, resume

    def both():
        pause(saga_id, reason="a look")
        return resume(saga_id)
    return both


@pytest.mark.parametrize("named", NAMINGS, ids=lambda n: "one-statement paths" if n else "locked paths")
@pytest.mark.parametrize("index", [1, 2], ids=["a middle step", "the last step"])
def test_a_step_delivered_while_the_saga_is_paused_and_resumed_runs_once_and_the_saga_finishes(
        transactional_db, sent, named, index):
    scenario = Scenario(f"step {index} delivered while paused and resumed", _line_at(index),
                        _step(LINE, index, named=named), _pause_and_resume)

    _assert_none(explore(scenario, sent, registry.get(LINE), named=named, check=_applied_once))


def test_a_compensation_delivered_while_the_saga_is_paused_and_resumed_undoes_once(transactional_db, sent):
    def compensating(sent):
        saga_id = _line_at(2, fail="c")(sent)
        engine.execute_step(saga_id, 2)
        sent.clear()
        return saga_id

    def compensate_b(saga_id):
        return lambda: engine.execute_compensation(saga_id, 1)

    def undone_once(saga_id, run):
        from sagas.models import ChaosEffect

        twice = [e.step for e in ChaosEffect.objects.filter(saga_id=saga_id) if e.undo_runs > 1]
        return [f"compensations run twice: {twice}"] if twice else []

    scenario = Scenario("b's compensation while paused and resumed", _with_compensation_of_a_to_come(compensating),
                        compensate_b, _pause_and_resume)

    _assert_none(explore(scenario, sent, registry.get(LINE), check=undone_once))
