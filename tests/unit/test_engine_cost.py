"""What a transition costs in SQL: pinned, so a later change cannot quietly add a statement.

Statements are counted as Django runs them, transaction control apart
(SQLite shows its BEGIN and COMMIT, PostgreSQL's driver sends them unseen),
and transactions are counted by their commits.
"""
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sagas import PermanentError, Saga, Step, canvas, registry
from sagas.engine import execute_compensation, execute_step, start_saga
from sagas.models import SagaInstance

SAGA = "tests.cost_plain"
CONTROL = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK")


@contextmanager
def cost():
    """Yields a dict filled on exit: ``statements`` (data statements) and ``transactions``."""
    figures = {}
    commits = []
    real_commit = connection.commit

    def counting_commit():
        commits.append(1)
        return real_commit()

    connection.commit = counting_commit
    try:
        with CaptureQueriesContext(connection) as queries:
            yield figures
    finally:
        del connection.commit
    figures["statements"] = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(CONTROL)]
    figures["transactions"] = len(commits)


def _step(ctx):
    if ctx.input.get("fail") == ctx.step:
        raise PermanentError("refused")
    return {"i": ctx.input.get("i")}


if SAGA not in registry:
    registry.register(Saga(SAGA, steps=[Step(name, _step, compensation=_step) for name in ("s0", "s1", "s2")]))


@pytest.fixture(autouse=True)
def no_failure_injection(settings):
    """As in production: failure injection off, so its rules (re-read every second) are not counted."""
    settings.SAGAS_FAILURE_INJECTION_ENABLED = False


@pytest.fixture
def running_saga(transactional_db, sent):
    saga = start_saga(SAGA, input={"i": 1})
    execute_step(saga.id, 0)
    return saga


def test_a_step_in_the_middle_costs_five_statements_and_one_transaction(running_saga):
    with cost() as spent:
        execute_step(running_saga.id, 1)

    # claim: an unlocked read and one conditional UPDATE of the step, outside
    # any transaction; then the report.
    kinds = [s.split()[0] for s in spent["statements"]]
    if connection.vendor == "postgresql":
        # One conditional statement writes the step and its two events, in no transaction of its own.
        assert kinds == ["SELECT", "UPDATE", "WITH"], "\n".join(spent["statements"])
        assert spent["transactions"] == 0
    else:
        # A transaction: read (locked), update the step, insert its two events.
        assert kinds == ["SELECT", "UPDATE", "SELECT", "UPDATE", "INSERT"], "\n".join(spent["statements"])
        assert spent["transactions"] == 1
    # The saga's row is not written while it moves along; as the benchmark
    # counts, with BEGIN and COMMIT: at most 8 per step.
    assert len(spent["statements"]) + 2 * spent["transactions"] <= 7


@pytest.mark.parametrize("unlocked", [True, False], ids=["one-statement", "locked"])
def test_a_steps_success_is_written_the_same_by_either_way_of_recording_it(running_saga, unlocked, monkeypatch):
    """On PostgreSQL a middle step's success is one conditional statement; elsewhere, and whenever that
    statement finds something changed, the locked transition. Both leave the same rows."""
    from sagas.engine import forward
    from sagas.models import SagaInstance, StepRecord

    if not unlocked:
        monkeypatch.setattr(forward, "_succeed_unlocked", lambda claim, report: False)
    saga_before = SagaInstance.objects.values("status", "due_at", "sweeps", "updated_at").get(pk=running_saga.pk)

    outcome = execute_step(running_saga.id, 1)

    assert outcome.decision.value == "continue"
    record = StepRecord.objects.get(saga=running_saga, index=1)
    assert (record.status, record.attempts, record.result, record.error) == ("succeeded", 1, {"i": 1}, "")
    assert (record.lease_expires_at, record.next_attempt_at, record.held_by, record.attempt_started_at) == (
        None, None, None, None)
    assert record.started_at <= record.finished_at
    started, succeeded = running_saga.events.filter(step=record)
    assert (started.kind, started.detail) == ("step_started", {"attempt": 1, "from": "pending", "to": "running"})
    assert started.created_at == record.started_at
    assert (succeeded.kind, succeeded.detail) == ("step_succeeded", {"from": "running", "to": "succeeded", "attempt": 1})
    assert succeeded.created_at == record.finished_at
    assert SagaInstance.objects.values("status", "due_at", "sweeps", "updated_at").get(pk=running_saga.pk) == saga_before


def test_the_first_step_also_starts_the_saga_in_one_more_update_and_insert(transactional_db, sent):
    saga = start_saga(SAGA, input={"i": 1})

    with cost() as spent:
        execute_step(saga.id, 0)

    # As a step in the middle, plus the saga's move to running and its event (written by the claim).
    kinds = [s.split()[0] for s in spent["statements"]]
    if connection.vendor == "postgresql":
        assert kinds == ["SELECT", "UPDATE", "INSERT", "UPDATE", "WITH"], "\n".join(spent["statements"])
        assert spent["transactions"] == 0
    else:
        assert kinds == ["SELECT", "UPDATE", "INSERT", "UPDATE", "SELECT", "UPDATE", "INSERT"], kinds
        assert spent["transactions"] == 1
    assert list(saga.events.values_list("kind", flat=True)) == [
        "saga_created", "saga_started", "step_started", "step_succeeded"]


def test_a_claim_in_a_saga_come_close_to_due_moves_it_away_in_one_more_update(running_saga):
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from sagas.engine import claim_step
    from sagas.models import SagaInstance

    SagaInstance.objects.filter(pk=running_saga.pk).update(due_at=timezone.now() + timedelta(seconds=1))

    with cost() as spent:
        claim_step(running_saga.id, 1, None)

    assert [s.split()[0] for s in spent["statements"]] == ["SELECT", "UPDATE", "UPDATE"]
    assert spent["transactions"] == 0
    due_in = SagaInstance.objects.get(pk=running_saga.pk).due_at - timezone.now()
    assert due_in > timedelta(seconds=settings.SAGAS_STALL_AFTER - 5)


def test_the_claim_writes_no_event_and_the_report_writes_it_dated_when_the_attempt_began(running_saga):
    from sagas.engine import claim_step, record_step
    from sagas.engine.core import Report
    from sagas.models import EventKind, StepRecord

    claim = claim_step(running_saga.id, 1, None)
    record = StepRecord.objects.get(saga=running_saga, index=1)
    assert record.status == "running" and record.attempt_started_at is not None
    assert not running_saga.events.filter(step=record).exists()

    record_step(running_saga.id, 1, Report(claim.attempt, ok=True, result={}), None)

    started, succeeded = running_saga.events.filter(step=record)
    assert (started.kind, succeeded.kind) == (EventKind.STEP_STARTED, EventKind.STEP_SUCCEEDED)
    assert started.created_at == record.attempt_started_at <= succeeded.created_at
    assert started.detail == {"from": "pending", "to": "running", "attempt": 1}
    assert StepRecord.objects.get(pk=record.pk).attempt_started_at is None  # written once


@pytest.mark.parametrize("named", [True, False], ids=["message names the saga", "older message"])
def test_a_compensation_costs_six_statements_in_two_transactions(transactional_db, sent, named):
    saga = start_saga(SAGA, input={"i": 1, "fail": "s2"})
    for index in range(3):
        execute_step(saga.id, index)  # s2 fails for good: the saga compensates

    with cost() as spent:
        execute_compensation(saga.id, 1, **(_named() if named else {}))

    kinds = [s.split()[0] for s in spent["statements"]]
    if connection.vendor == "postgresql":
        # The report is one statement; so is the claim when the message names the saga (else: locked).
        assert kinds == (["WITH", "WITH"] if named else ["SELECT", "UPDATE", "INSERT", "WITH"]), kinds
        assert spent["transactions"] == (0 if named else 1)
    else:
        assert len(spent["statements"]) <= 6, "\n".join(spent["statements"])
        assert spent["transactions"] == 2


def test_starting_a_saga_costs_three_statements_in_one_transaction(transactional_db, sent):
    with cost() as spent:
        start_saga(SAGA, input={"i": 1})

    # the instance, its step records (one INSERT), its first event
    assert len(spent["statements"]) <= 3, "\n".join(spent["statements"])
    assert spent["transactions"] == 1


def test_a_start_writes_the_rows_the_orm_would_with_its_times_from_the_database_clock(transactional_db, sent, settings):
    from django.db.models.functions import Now

    from sagas.models import SagaEvent, SagaInstance, StepRecord

    saga = start_saga(SAGA, input={"i": 1}, idempotency_key="written-once")
    db_now = SagaInstance.objects.annotate(now=Now()).values_list("now", flat=True).get(pk=saga.pk)

    stored = SagaInstance.objects.get(pk=saga.pk)
    assert (stored.status, stored.input, stored.results, stored.version, stored.idempotency_key, stored.sweeps) == (
        "pending", {"i": 1}, {}, 1, "written-once", 0)
    assert stored.created_at == saga.created_at and stored.updated_at == saga.updated_at
    # Due from the database's clock, a stall time on (the sweeper sends a start whose message was lost).
    stall = settings.SAGAS_STALL_AFTER
    assert stall - 1 <= (stored.due_at - db_now).total_seconds() <= stall + 0.5
    steps = list(StepRecord.objects.filter(saga=saga).order_by("index").values_list(
        "index", "name", "status", "attempts", "stage", "has_compensation"))
    assert steps == [(0, "s0", "pending", 0, 0, True), (1, "s1", "pending", 0, 1, True), (2, "s2", "pending", 0, 2, True)]
    (created,) = SagaEvent.objects.filter(saga=saga)
    assert created.kind == "saga_created" and created.step_id is None
    assert created.detail == {"version": 1, "idempotency_key": "written-once", "resubmitted_from": None}
    assert abs((created.created_at - db_now).total_seconds()) < 1.5
    # The instance returned is saved: saving it again updates its row, it does not insert another.
    saga.error = "noted"
    saga.save(update_fields=["error"])
    assert SagaInstance.objects.get(pk=saga.pk).error == "noted"
    # The same key again: the same saga, nothing new written.
    assert start_saga(SAGA, input={"i": 1}, idempotency_key="written-once").pk == saga.pk
    assert SagaInstance.objects.count() == 1 and StepRecord.objects.count() == 3


def test_sending_the_first_step_after_commit_reads_nothing_back(transactional_db, monkeypatch):
    from celery.canvas import _chain

    chains = []
    monkeypatch.setattr(_chain, "apply_async", lambda self, *args, **kwargs: chains.append(self))

    with cost() as spent:
        start_saga(SAGA, input={"i": 1})

    # The engine hands the canvas the definition it has: the chain is built without a look-up.
    assert len(chains) == 1 and chains[0].tasks[0].task == "sagas.run_step"
    assert len(spent["statements"]) == 3, "\n".join(spent["statements"])


def _parallel_saga(members: int) -> str:
    from sagas import Parallel, Saga, Step, registry

    name = f"tests.cost_fan{members}"
    if name not in registry:
        registry.register(Saga(name, steps=[
            Step("a", _noop), Parallel("fan", *[Step(f"m{i}", _noop) for i in range(members)]), Step("z", _noop),
        ]))
    return name


def _noop(ctx):
    return {}


@pytest.mark.parametrize("members", [3, 60])
def test_a_parallel_member_costs_the_same_statements_whatever_the_size_of_its_stage(transactional_db, sent, members):
    saga = start_saga(_parallel_saga(members), input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)

    with cost() as spent:
        execute_step(saga.id, 2)

    # As a plain step, plus one count of the members still open (the join).
    assert len(spent["statements"]) <= 7, "\n".join(spent["statements"])


@pytest.mark.parametrize("members", [3, 60])
def test_a_parallel_member_reads_only_its_own_record_and_the_earlier_stages(transactional_db, sent, members):
    from sagas import engine

    saga = start_saga(_parallel_saga(members), input={})
    execute_step(saga.id, 0)

    with engine.core.locked_saga(saga.id, step=2) as locked:
        read = sorted(r.index for r in locked.records)

    assert read == [0, 2]


def _refuse(ctx):
    raise PermanentError("refused")


def _undoable_fan(members: int) -> str:
    """a, a Parallel of ``members`` members, then z, which refuses: every member is undone."""
    from sagas import Parallel, Saga, Step, registry

    name = f"tests.cost_undo_fan{members}"
    if name not in registry:
        registry.register(Saga(name, steps=[
            Step("a", _noop, compensation=_noop),
            Parallel("fan", *[Step(f"m{i}", _noop, compensation=_noop) for i in range(members)]),
            Step("z", _refuse),
        ]))
    return name


def _compensating_fan(members: int):
    saga = start_saga(_undoable_fan(members), input={})
    for index in range(members + 2):
        execute_step(saga.id, index)  # z refuses: the saga compensates
    return saga


@pytest.mark.parametrize("members", [3, 60])
def test_a_parallel_members_compensation_costs_the_same_statements_whatever_the_size_of_its_stage(
        transactional_db, sent, members):
    saga = _compensating_fan(members)

    with cost() as spent:
        execute_compensation(saga.id, 2)

    # As a plain step's compensation, plus one look for siblings still to undo.
    assert len(spent["statements"]) <= 7, "\n".join(spent["statements"])
    assert spent["transactions"] == 2


@pytest.mark.parametrize("members", [3, 60])
def test_a_parallel_members_compensation_reads_every_record_but_its_siblings(transactional_db, sent, members):
    from sagas import engine

    saga = _compensating_fan(members)

    with engine.core.locked_saga(saga.id, undoing=2) as locked:
        read = sorted(r.index for r in locked.records)

    assert read == [0, 2, members + 1]


def test_a_member_undone_while_a_sibling_is_not_leaves_the_saga_compensating_until_the_last(
        transactional_db, sent):
    from sagas import Parallel, Saga, Step, registry

    name = "tests.cost_fan_first"
    if name not in registry:  # nothing before the stage: only the siblings decide
        registry.register(Saga(name, steps=[
            Parallel("fan", *[Step(f"m{i}", _noop, compensation=_noop) for i in range(3)]), Step("z", _refuse)]))
    saga = start_saga(name, input={})
    for index in range(4):
        execute_step(saga.id, index)

    for index in (2, 0):
        execute_compensation(saga.id, index)
        saga.refresh_from_db()
        assert saga.status == "compensating"  # m1 is still to undo
    execute_compensation(saga.id, 1)
    saga.refresh_from_db()
    assert saga.status == "compensated"


# --- waiting steps: the ordinary step above costs what it did; a wait and its signal cost this ------------

WAITING_SAGA = "tests.cost_waiting"

if WAITING_SAGA not in registry:
    registry.register(Saga(WAITING_SAGA, steps=[
        Step("s0", _step, compensation=_step),
        Step("gate", _step, compensation=_step, wait_for_signal=True, signal_timeout=3600),
        Step("s2", _step, compensation=_step),
    ]))


@pytest.fixture
def waiting_saga(transactional_db, sent):
    saga = start_saga(WAITING_SAGA, input={"i": 1})
    execute_step(saga.id, 0)
    return saga


def test_a_step_that_begins_to_wait_costs_one_update_of_the_saga_more_than_an_ordinary_step(waiting_saga):
    with cost() as spent:
        execute_step(waiting_saga.id, 1)

    # As an ordinary step, plus the saga's due time moved to the deadline (nothing to sweep before it).
    assert [s.split()[0] for s in spent["statements"]] == ["SELECT", "UPDATE", "SELECT", "UPDATE", "INSERT", "UPDATE"]
    assert spent["transactions"] == 1


def test_a_signal_costs_five_statements_in_one_transaction(waiting_saga):
    from sagas import complete_step

    execute_step(waiting_saga.id, 1)

    with cost() as spent:
        complete_step(waiting_saga, "gate", result={"ok": True})

    # read (locked) the saga with its steps, update the step, insert its events (signalled,
    # succeeded), update the saga's due time, read the saga back for the caller
    assert [s.split()[0] for s in spent["statements"]] == ["SELECT", "UPDATE", "INSERT", "UPDATE", "SELECT"], \
        "\n".join(spent["statements"])
    assert spent["transactions"] == 1


# --- PostgreSQL: the engine's statements are prepared once per connection ------------------------

postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements: PostgreSQL")


def _prepared_here() -> dict[str, int]:
    """This connection's prepared statements, and how many times each has run."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        return dict(cursor.fetchall())


@postgres_only
def test_on_postgresql_a_steps_statements_are_prepared_once_and_then_reused(running_saga):
    before = _prepared_here()
    with cost() as spent:
        execute_step(running_saga.id, 1)
    after = _prepared_here()

    # The first step prepared every shape of a claim: the second prepares at
    # most its one-statement record, and runs every statement as a prepared one.
    assert len(set(after) - set(before)) <= 1
    assert sum(after.values()) - sum(before.values(), 0) == len(spent["statements"]) == 3
    assert {s.split()[0] for s, runs in after.items() if runs > before.get(s, 0)} == {"SELECT", "UPDATE", "WITH"}
    # Django's log still shows each statement with its values, as for any other.
    assert running_saga.id.hex in spent["statements"][0].replace("-", "")


@postgres_only
def test_with_prepared_statements_off_nothing_is_prepared(transactional_db, sent, settings):
    settings.SAGAS_PREPARED_STATEMENTS = False
    connection.close()  # a fresh connection: none prepared by earlier tests
    saga = start_saga(SAGA, input={"i": 1})
    for index in range(3):
        execute_step(saga.id, index)

    assert _prepared_here() == {}
    saga.refresh_from_db()
    assert saga.status == "succeeded"


# --- PostgreSQL: a claim whose message names the saga's type and version is one statement ------------


def _named():
    return canvas.names_of(registry.get(SAGA))


def test_a_middle_step_whose_message_names_its_saga_costs_two_statements_on_postgresql(running_saga):
    with cost() as spent:
        outcome = execute_step(running_saga.id, 1, **_named())

    assert outcome.decision.value == "continue"
    kinds = [s.split()[0] for s in spent["statements"]]
    if connection.vendor == "postgresql":
        assert kinds == ["WITH", "WITH"], "\n".join(spent["statements"])  # the claim, then the report
        assert spent["transactions"] == 0
    else:  # the message's names change nothing on SQLite
        assert kinds == ["SELECT", "UPDATE", "SELECT", "UPDATE", "INSERT"]


@pytest.mark.parametrize("named", [True, False], ids=["one-statement", "read-then-update"])
def test_either_claim_holds_the_step_alike_and_hands_the_action_the_same_context(running_saga, named):
    from sagas.engine import claim_step
    from sagas.models import StepRecord

    claim = claim_step(running_saga.id, 1, None, definition=registry.get(SAGA) if named else None)

    record = StepRecord.objects.get(saga=running_saga, index=1)
    assert (claim.attempt, claim.index, claim.step.name) == (1, 1, "s1")
    assert (claim.context.input, claim.context.results) == ({"i": 1}, {"s0": {"i": 1}})
    assert (claim.context.saga_type, claim.context.idempotency_key) == (SAGA, f"{running_saga.id}:s1")
    assert (record.status, record.attempts, record.next_attempt_at) == ("running", 1, None)
    assert record.started_at == record.attempt_started_at == claim.began_at
    assert record.held_by and record.lease_expires_at > record.attempt_started_at
    assert not running_saga.events.filter(step=record).exists()


# The first step's claim starts the saga too (its row, its event, the step's row); the last step's report
# ends it (the step's row, the saga's, three events). Elsewhere: as any step, plus the saga's row.
ELSEWHERE = {0: ["SELECT", "UPDATE", "INSERT", "UPDATE", "SELECT", "UPDATE", "INSERT"],
             2: ["SELECT", "UPDATE", "SELECT", "UPDATE", "INSERT", "UPDATE"]}


@pytest.mark.parametrize("index", [0, 2], ids=["first step", "last step"])
def test_the_steps_that_start_and_end_the_saga_cost_two_statements_on_postgresql(transactional_db, sent, index):
    saga = start_saga(SAGA, input={"i": 1})
    for earlier in range(index):
        execute_step(saga.id, earlier, **_named())

    with cost() as spent:
        outcome = execute_step(saga.id, index, **_named())

    assert outcome.decision.value == "continue"
    kinds = [s.split()[0] for s in spent["statements"]]
    if connection.vendor == "postgresql":
        assert kinds == ["WITH", "WITH"], "\n".join(spent["statements"])  # the claim, then the report
        assert spent["transactions"] == 0
    else:
        assert kinds == ELSEWHERE[index], kinds
        assert spent["transactions"] == 1
    assert SagaInstance.objects.get(pk=saga.pk).status == ("running" if index == 0 else "succeeded")


_SAGA_FIELDS = ("status", "started_at", "finished_at", "updated_at", "due_at", "sweeps", "results", "error")


def _saga_row(saga):
    return SagaInstance.objects.values(*_SAGA_FIELDS).get(pk=saga.pk)


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement", "read-then-update"])
def test_the_first_claim_starts_the_saga_alike_either_way(transactional_db, sent, one_statement):
    from sagas.engine import claim_step
    from sagas.models import StepRecord

    saga = start_saga(SAGA, input={"i": 1})
    due_at = _saga_row(saga)["due_at"]

    claim = claim_step(saga.id, 0, None, definition=registry.get(SAGA) if one_statement else None)

    row = _saga_row(saga)
    record = StepRecord.objects.get(saga=saga, index=0)
    assert (claim.attempt, claim.index, claim.context.input, claim.context.results) == (1, 0, {"i": 1}, {})
    assert (row["status"], row["finished_at"], row["sweeps"], row["results"], row["error"]) == (
        "running", None, 0, {}, "")
    assert row["started_at"] == row["updated_at"] == record.started_at == record.attempt_started_at == claim.began_at
    assert row["due_at"] == due_at  # far enough off: not moved
    assert (record.status, record.attempts, record.next_attempt_at) == ("running", 1, None)
    assert record.held_by and record.lease_expires_at > record.attempt_started_at
    started = saga.events.get(kind="saga_started")
    assert (started.step, started.detail, started.created_at) == (
        None, {"from": "pending", "to": "running"}, row["started_at"])
    assert not saga.events.filter(step=record).exists()


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement", "locked"])
def test_the_last_steps_success_ends_the_saga_alike_either_way(running_saga, one_statement, monkeypatch):
    from sagas.engine import forward
    from sagas.models import StepRecord

    execute_step(running_saga.id, 1)
    if not one_statement:
        monkeypatch.setattr(forward, "_succeed_unlocked", lambda claim, report: False)

    outcome = execute_step(running_saga.id, 2, **_named())

    assert outcome.decision.value == "continue"
    row = _saga_row(running_saga)
    record = StepRecord.objects.get(saga=running_saga, index=2)
    assert (row["status"], row["due_at"], row["sweeps"], row["error"]) == ("succeeded", None, 0, "")
    assert row["results"] == {"s0": {"i": 1}, "s1": {"i": 1}, "s2": {"i": 1}}
    assert row["finished_at"] == row["updated_at"] == record.finished_at
    assert (record.status, record.result, record.held_by, record.lease_expires_at, record.attempt_started_at) == (
        "succeeded", {"i": 1}, None, None, None)
    started, succeeded, ended = running_saga.events.order_by("id")[len(running_saga.events.all()) - 3:]
    assert [(e.kind, e.step_id) for e in (started, succeeded, ended)] == [
        ("step_started", record.pk), ("step_succeeded", record.pk), ("saga_succeeded", None)]
    assert started.created_at == record.started_at
    assert succeeded.created_at == ended.created_at == row["finished_at"]
    assert ended.detail == {"from": "running", "to": "succeeded"}


def _compensating(fail="s2"):
    saga = start_saga(SAGA, input={"i": 1, "fail": fail})
    for index in range(3):
        execute_step(saga.id, index, **_named())  # the failing step compensates the saga
    return saga


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement", "locked"])
def test_a_compensations_claim_holds_the_step_alike_either_way(transactional_db, sent, one_statement):
    from sagas.engine import compensation
    from sagas.models import StepRecord

    saga = _compensating()
    before = _saga_row(saga)

    claim = compensation._claim_in_one_statement(saga.id, 1, registry.get(SAGA)) if one_statement else None
    assert (claim is not None) == (one_statement and connection.vendor == "postgresql")
    claim = claim or compensation._claim_compensation(saga.id, 1, None)

    record = StepRecord.objects.get(saga=saga, index=1)
    assert (claim.attempt, claim.index, claim.step.name, claim.began_at) == (1, 1, "s1", None)
    assert (claim.context.input, claim.context.results, claim.context.result) == (
        {"i": 1, "fail": "s2"}, {"s0": {"i": 1}}, {"i": 1})
    assert (claim.context.is_compensation, claim.context.idempotency_key) == (True, f"{saga.id}:s1:compensation")
    assert (record.status, record.compensation_attempts, record.next_attempt_at) == ("compensating", 1, None)
    assert record.held_by and record.lease_expires_at > saga.events.get(kind="compensation_started").created_at
    started = saga.events.get(kind="compensation_started")
    assert (started.step_id, started.detail) == (record.pk, {"from": "succeeded", "to": "compensating", "attempt": 1})
    assert _saga_row(saga) == before  # the saga's row is not written


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement", "locked"])
@pytest.mark.parametrize("index", [1, 0], ids=["not the last", "the last"])
def test_a_compensations_success_is_recorded_alike_either_way(transactional_db, sent, one_statement, index,
                                                              monkeypatch):
    from sagas.engine import compensation
    from sagas.models import StepRecord

    saga = _compensating()
    if index == 0:
        execute_compensation(saga.id, 1, **_named())
    if not one_statement:
        monkeypatch.setattr(compensation, "_compensated_unlocked", lambda claim, report: False)
    before = _saga_row(saga)

    outcome = execute_compensation(saga.id, index, **_named())

    assert outcome.decision.value == "continue"
    record = StepRecord.objects.get(saga=saga, index=index)
    assert (record.status, record.compensation_error, record.held_by, record.lease_expires_at) == (
        "compensated", "", None, None)
    ended = saga.events.filter(step=record).order_by("id").last()
    assert (ended.kind, ended.detail, ended.created_at) == (
        "step_compensated", {"from": "compensating", "to": "compensated", "attempt": 1}, record.compensated_at)
    row = _saga_row(saga)
    if index == 1:
        assert row == before  # something is left to undo: the saga's row is not written
        return
    assert (row["status"], row["due_at"], row["sweeps"], row["error"]) == ("compensated", None, 0, before["error"])
    assert row["results"] == {"s0": {"i": 1}, "s1": {"i": 1}}
    assert row["finished_at"] == row["updated_at"] == record.compensated_at
    last = saga.events.order_by("id").last()
    assert (last.kind, last.step_id, last.detail, last.created_at) == (
        "saga_compensated", None, {"from": "compensating", "to": "compensated"}, row["finished_at"])
