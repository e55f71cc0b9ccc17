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
and the final rows of the two must be the same (a differential check).
``SAGAS_DEEP_INTERLEAVINGS=1`` adds the slower scenarios.
"""
import os

import pytest
from django.db import connection

from sagas import cancel, registry, start_saga
from sagas import engine
from tests.interleaving import Scenario, explore

LINE = "tests.effects_line"  # a -> b -> c
FANOUT = "tests.effects_fanout"  # a -> Parallel(b1..b4) -> c
FIRST_FANOUT = "tests.effects_first_fanout"  # Parallel(b1..b3) -> c
DEEP = os.environ.get("SAGAS_DEEP_INTERLEAVINGS") == "1"

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
