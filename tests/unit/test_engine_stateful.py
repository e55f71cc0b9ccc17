"""Random sequences of engine transitions with random faults (Hypothesis's stateful testing).

The machine drives one saga whose steps leave real effects (``ChaosEffect``
rows) the way workers, brokers and people would, in any order Hypothesis
picks: deliver a message (or a duplicate of one), hold an attempt at work,
finish it or lose it (its worker died: its effect may be in place), cancel,
pause and resume, signal nothing, sweep. After every transition no step is skipped after an
attempt; at the end the saga is settled as workers and the sweeper would
and every invariant of ``tests/interleaving.py`` must hold.

Sized for the suite (``SAGAS_STATEFUL_EXAMPLES``, 20 by default; set it
higher for a deeper run).
"""
import os

import pytest
from django.db import connection
from django.db.models.functions import Now
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sagas import cancel, pause, registry, resume, start_saga
from sagas import engine
from sagas.engine import Claim, Decision
from sagas.engine.running import invoke, success_report
from sagas.errors import InvalidTransition
from sagas.models import ChaosEffect, SagaInstance, StepRecord, StepStatus
from tests import interleaving

TYPES = ["tests.effects_line", "tests.effects_fanout", "tests.effects_first_fanout"]
EXAMPLES = int(os.environ.get("SAGAS_STATEFUL_EXAMPLES", "20"))


class SagaMachine(RuleBasedStateMachine):
    """One saga, its messages on their way (``pool``) and its attempts at work (``at_work``)."""

    sent: list = []  # the ``sent`` fixture's list, set by the test

    def __init__(self):
        super().__init__()
        self.pool: list[tuple] = []
        self.at_work: list[Claim] = []

    @initialize(saga_type=st.sampled_from(TYPES), fail=st.one_of(st.none(), st.sampled_from(["a", "b", "b2", "c"])),
                named=st.booleans())
    def start(self, saga_type, fail, named):
        self.definition = registry.get(saga_type)
        self.named = named and connection.vendor == "postgresql"
        self.sent.clear()
        self.saga_id = start_saga(saga_type, input={"fail": fail} if fail else {}).id
        self._collect()

    # --- what the engine sent becomes messages on their way --------------------------------------------

    def _collect(self):
        for kind, saga_id, what in list(self.sent):
            if str(saga_id) != str(self.saga_id):
                continue
            if kind == "forward":
                self.pool += [("step", i) for i in self._stage_from(what)]
            elif kind == "steps":
                self.pool += [("step", i) for i in what]
            elif kind == "compensate":
                self.pool.append(("compensate", tuple(what)))
            elif kind == "late":
                engine.compensate_late_success(saga_id, *what)  # delivered at once: it moves nothing
        self.sent.clear()

    def _stage_from(self, index):
        stage = self.definition.stage_indices(index)
        return [i for i in stage if i >= index]

    def _names(self):
        return {"saga_type": self.definition.name, "version": self.definition.version} if self.named else {}

    def _follow(self, index, outcome):
        """What a run_step task does with its outcome: the chain goes on, the task retries, or the error callback."""
        if outcome.decision is Decision.CONTINUE and not self.definition.is_parallel(index):
            following = self.definition.next_stage_start(index)
            if following is not None:
                self.pool += [("step", i) for i in self.definition.stage_indices(following)]
        elif outcome.decision is Decision.RETRY:
            StepRecord.objects.filter(saga_id=self.saga_id, index=index).update(next_attempt_at=None)
            self.pool.append(("step", index))
        elif outcome.decision is Decision.FAILED:
            engine.begin_compensation(self.saga_id, reason="error callback")
        self._collect()

    # --- rules ------------------------------------------------------------------------------------------

    @precondition(lambda self: self.pool)
    @rule(data=st.data(), duplicate=st.booleans(), hold=st.booleans())
    def deliver(self, data, duplicate, hold):
        """A message arrives (a duplicate stays on its way too); a step's attempt may stay at work."""
        message = data.draw(st.sampled_from(self.pool))
        if not duplicate:
            self.pool.remove(message)
        if message[0] == "compensate":
            for index in message[1]:
                outcome = engine.execute_compensation(self.saga_id, index, **self._names())
                if outcome.decision is not Decision.CONTINUE:
                    break
            self._collect()
            return
        index = message[1]
        if not hold:
            self._follow(index, engine.execute_step(self.saga_id, index, **self._names()))
            return
        claim = engine.claim_step(self.saga_id, index, None,
                                  definition=self.definition if self.named else None)
        if isinstance(claim, Claim):
            self.at_work.append(claim)
            self._collect()
        else:
            self._follow(index, claim)

    @precondition(lambda self: self.at_work)
    @rule(data=st.data())
    def finish(self, data):
        """An attempt at work ends: its action runs and reports."""
        claim = data.draw(st.sampled_from(self.at_work))
        self.at_work.remove(claim)
        try:
            report = success_report(claim, invoke(claim.step.action, claim, phase="action"))
        except Exception as exc:  # noqa: BLE001 - the action's failure is its report
            from sagas.engine.forward import failure_report
            report = failure_report(claim, exc)
        outcome = engine.record_step(self.saga_id, claim.index, report, None, claim=claim)
        self._follow(claim.index, outcome)

    @precondition(lambda self: self.at_work)
    @rule(data=st.data(), applied=st.booleans())
    def lose(self, data, applied):
        """An attempt's worker dies: its effect may be in place; its lease runs out; its message comes back."""
        claim = data.draw(st.sampled_from(self.at_work))
        self.at_work.remove(claim)
        if applied:
            ChaosEffect.objects.get_or_create(key=claim.context.idempotency_key,
                                              defaults={"saga_id": self.saga_id, "step": claim.step.name,
                                                        "applied": 1, "runs": 1})
        interleaving.lose_attempts(self.saga_id)
        self.pool.append(("step", claim.index))  # acks late: redelivered

    @rule()
    def cancel_it(self):
        try:
            cancel(self.saga_id, reason="stop")
        except InvalidTransition:
            pass  # finished, or already being undone
        self._collect()

    @rule()
    def pause_it(self):
        try:
            pause(self.saga_id, reason="a person looks")
        except InvalidTransition:
            pass  # finished, or paused already
        self._collect()

    @rule()
    def resume_it(self):
        try:
            resume(self.saga_id)
        except InvalidTransition:
            pass  # not paused
        self._collect()

    @invariant()
    def a_paused_saga_is_never_due(self):
        if hasattr(self, "saga_id"):
            assert not SagaInstance.objects.filter(pk=self.saga_id, status="paused", due_at__isnull=False).exists()

    @rule()
    def sweep(self):
        SagaInstance.objects.filter(pk=self.saga_id, due_at__isnull=False).update(due_at=Now())
        engine.sweep()
        self._collect()

    @invariant()
    def nothing_skipped_after_an_attempt(self):
        if hasattr(self, "saga_id"):
            skipped = StepRecord.objects.filter(saga_id=self.saga_id, status=StepStatus.SKIPPED, attempts__gt=0)
            assert not skipped.exists(), list(skipped.values_list("name", "attempts"))

    def teardown(self):
        if not hasattr(self, "saga_id"):
            return
        for claim in self.at_work:  # attempts still at work when the run ends: their workers die
            interleaving.lose_attempts(self.saga_id)
            self.pool.append(("step", claim.index))
        try:
            resume(self.saga_id)  # a person resumes what was left paused
        except InvalidTransition:
            pass
        self._collect()
        for message in self.pool:
            self.sent.append(("steps" if message[0] == "step" else "compensate", self.saga_id,
                              [message[1]] if message[0] == "step" else list(message[1])))
        interleaving.settle(self.saga_id, self.sent, self.definition, named=self.named)
        found = interleaving.problems(self.saga_id)
        assert not found, found


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_random_sequences_of_transitions_and_faults_keep_every_invariant(transactional_db, sent):
    SagaMachine.sent = sent
    run_state_machine_as_test(SagaMachine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=25, deadline=None, derandomize=not os.environ.get(
            "SAGAS_STATEFUL_EXAMPLES"), suppress_health_check=list(HealthCheck)))
