"""The engine's hot statements, compiled once and run many times.

Profiling a worker (py-spy, no-op steps on SQLite) showed the ORM building
and compiling statements took three times as long as the database took to
run them: the saga's locked read compiles in 0.8 ms and runs in 0.13 ms.
The statements of a transition have a handful of shapes, so each shape is
compiled once per process and database and then run with new values:

- ``PreparedRead``: a queryset built once from placeholder values; each run
  puts the real values where the placeholders were and turns the rows into
  model instances exactly as the queryset would (the same converters, the
  same ``select_related`` objects, the same annotations).
- ``update_fields``: one ``UPDATE ... WHERE pk`` of the fields a transition
  changed, values prepared by the fields themselves.
- ``insert_rows``: one multi-row ``INSERT`` (events), with no ``RETURNING``.

On PostgreSQL these statements are also prepared on the server, once per
connection (``SAGAS_PREPARED_STATEMENTS``, on by default): Django binds
parameters on the client and never prepares, so the server would otherwise
parse and plan each statement every time (0.2 ms of planning for the locked
read alone), and the client would quote every value into the text. Measured
in one process, no broker: 7.8 ms per no-op step before, 5.2 ms after.
Turn it off behind a pooler that cannot keep prepared statements
(PgBouncer in transaction mode before 1.21).

Statements still go through Django's cursor wrapper, so they are logged and
counted like any other (``CaptureQueriesContext``, ``django_assert_num_queries``).
"""
from __future__ import annotations

import sys
import threading
import uuid
from typing import Any, Callable, Iterable

import psycopg
from django.conf import settings
from django.db import connections, models
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models.query import get_related_populators
from django.db.models.sql import Query
from django.utils import timezone

from ..models import SagaEvent, StepRecord

DB = "default"


def cursor():
    """A cursor for the engine's statements: Django's, or on PostgreSQL one that prepares them.

    Wrapped as Django wraps its own (logged, counted, run through
    ``execute_wrapper``), on the same connection and in the same transaction.
    """
    connection = connections[DB]
    if connection.vendor != "postgresql" or not settings.SAGAS_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw_connection = connection.connection
    if raw_connection.prepare_threshold is None:
        # Django sets None, which refuses an explicit prepare too. Its own
        # cursors bind on the client and never prepare, whatever the threshold.
        raw_connection.prepare_threshold = sys.maxsize
    with connection.wrap_database_errors:
        raw = _PreparingCursor(raw_connection)
    return _DebugCursor(raw, connection) if connection.queries_logged else connection.make_cursor(raw)


class _DebugCursor(CursorDebugWrapper):
    """Django's debug wrapper, logging the statement with its values in (psycopg keeps no text of a prepared one)."""

    def execute(self, sql, params=None):
        try:
            logged = self.db.ops.compose_sql(sql, params)
        except Exception:  # noqa: BLE001 - a value that cannot be shown: log the statement as written
            logged = sql
        with self.debug_sql(logged, params):
            return CursorWrapper.execute(self, sql, params)


class _PreparingCursor(psycopg.Cursor):
    """A psycopg cursor that binds parameters on the server and prepares every statement it runs."""

    def execute(self, query, params=None, *, prepare=True, binary=None):
        return super().execute(query, params, prepare=prepare, binary=binary)


class PreparedRead:
    """A queryset of a fixed shape, compiled once per database and run with other values.

    ``build`` returns the queryset for keyword values; it is called once,
    with placeholders (a UUID, an int) that are recognised among the compiled
    parameters and replaced on each run. Every parameter must be one of
    ``build``'s keywords: a constant in the shape would be frozen too.
    """

    def __init__(self, build: Callable[..., models.QuerySet], **kinds: type):
        self.build = build
        self.kinds = kinds  # keyword -> uuid.UUID or int
        self.compiled: dict[str, tuple] = {}

    def _placeholders(self) -> dict[str, Any]:
        values = {}
        for n, (name, kind) in enumerate(sorted(self.kinds.items())):
            values[name] = uuid.UUID(int=0xC0FFEE00 + n) if kind is uuid.UUID else 1_999_999_000 + n
        return values

    def _compile(self):
        connection = connections[DB]  # one per thread: so is each compiled statement
        key = (connection.vendor, threading.get_ident())
        if key not in self.compiled:
            placeholders = self._placeholders()
            queryset = self.build(**placeholders)
            compiler = queryset.query.get_compiler(using=DB)
            sql, params = compiler.as_sql()
            slots = []
            for param in params:
                slot = next((name for name, value in placeholders.items()
                             if param == value or (isinstance(value, uuid.UUID) and param == value.hex)), None)
                if slot is None:
                    raise ValueError(f"a constant ({param!r}) in a prepared read: make it a keyword")
                slots.append((slot, isinstance(param, str)))
            self.compiled[key] = (compiler, sql, slots)
        return self.compiled[key]

    def __call__(self, **values: Any) -> list[models.Model]:
        compiler, sql, slots = self._compile()
        params = [_as_param(values[name], as_text) for name, as_text in slots]
        with cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return _instances(compiler, rows)


def _as_param(value: Any, as_text: bool) -> Any:
    if isinstance(value, (uuid.UUID, str)) and not isinstance(value, bool):
        value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        return value.hex if as_text else value
    return value


def _instances(compiler, rows: list) -> list[models.Model]:
    """Model instances from rows, as ``ModelIterable`` makes them."""
    select, klass_info, annotations = compiler.select, compiler.klass_info, compiler.annotation_col_map
    model = klass_info["model"]
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    init_list = [column[0].target.attname for column in select[start:end]]
    populators = get_related_populators(klass_info, select, DB)
    made = []
    for row in compiler.results_iter(results=[rows]):
        instance = model.from_db(DB, init_list, row[start:end])
        for populator in populators:
            populator.populate(row, instance)
        for name, position in (annotations or {}).items():
            setattr(instance, name, row[position])
        made.append(instance)
    return made


_UPDATES: dict[tuple, str] = {}


def update_fields(instance: models.Model, names: Iterable[str], *, expect: dict[str, Any] | None = None,
                  parent_has: tuple[str, str, Any] | None = None, **values: Any) -> int:
    """``UPDATE`` the named fields of ``instance`` (and ``values``, set on it first) in one statement.

    ``expect``: only if these fields still hold these values (``None``: is
    null). ``parent_has``: ``(foreign key, field, value)``, only if the row
    it points to has that value. Returns the number of rows changed (0 or 1).
    """
    for name, value in values.items():
        setattr(instance, name, value)
    meta = instance._meta
    fields = [meta.get_field(name) for name in (*names, *values)]
    expected = [(meta.get_field(name), value) for name, value in (expect or {}).items()]
    connection = connections[DB]
    key = (meta.db_table, connection.vendor, tuple(f.attname for f in fields),
           tuple((f.attname, value is None) for f, value in expected), parent_has and parent_has[:2])
    if key not in _UPDATES:
        _UPDATES[key] = _update_sql(connection, meta, fields, expected, parent_has)
    params = [f.get_db_prep_save(getattr(instance, f.attname), connection) for f in fields]
    params.append(meta.pk.get_db_prep_value(instance.pk, connection))
    params += [f.get_db_prep_save(value, connection) for f, value in expected if value is not None]
    if parent_has:
        link = meta.get_field(parent_has[0])
        params.append(link.related_model._meta.get_field(parent_has[1]).get_db_prep_save(parent_has[2], connection))
    with cursor() as cur:
        cur.execute(_UPDATES[key], params)
        return cur.rowcount


def _update_sql(connection, meta, fields, expected, parent_has) -> str:
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    where = [f"{quote(meta.pk.column)} = %s"]
    where += [f"{quote(f.column)} IS NULL" if value is None else f"{quote(f.column)} = %s" for f, value in expected]
    if parent_has:
        link = meta.get_field(parent_has[0])
        parent = link.related_model._meta
        where.append(f"EXISTS (SELECT 1 FROM {quote(parent.db_table)} WHERE {quote(parent.pk.column)} = "
                     f"{quote(meta.db_table)}.{quote(link.column)} AND "
                     f"{quote(parent.get_field(parent_has[1]).column)} = %s)")
    return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {' AND '.join(where)}"


_INSERTS: dict[tuple, str] = {}


def insert_rows(rows: list[models.Model]) -> None:
    """``INSERT`` new rows of one model in one statement (ids the database makes are not read back).

    ``auto_now`` and ``auto_now_add`` fields left empty are set here, as
    ``save`` would. A value may be an expression (``Now()``, the database's
    clock): it is compiled into the statement, its own values passed with the rest.
    """
    if not rows:
        return
    meta = rows[0]._meta
    fields = [f for f in meta.concrete_fields if not f.db_returning]  # not an id the database makes
    connection = connections[DB]
    now = timezone.now()
    params, shapes = [], []
    compiler = None
    for row in rows:
        placeholders = []
        for f in fields:
            value = getattr(row, f.attname)
            if value is None and (getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False)):
                value = now
                setattr(row, f.attname, value)
            if hasattr(value, "resolve_expression"):
                compiler = compiler or Query(meta.model).get_compiler(using=DB)
                sql, expression_params = compiler.compile(
                    value.resolve_expression(compiler.query, allow_joins=False, for_save=True))
                placeholders.append(sql)
                params.extend(expression_params)
            else:
                placeholders.append("%s")
                params.append(f.get_db_prep_save(value, connection))
        shapes.append(tuple(placeholders))
    key = (meta.db_table, connection.vendor, tuple(shapes))
    if key not in _INSERTS:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in fields)
        values = ", ".join("(" + ", ".join(shape) + ")" for shape in shapes)
        _INSERTS[key] = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {values}"
    with cursor() as cur:
        cur.execute(_INSERTS[key], params)
    for row in rows:
        row._state.adding, row._state.db = False, DB  # as saved: a later save() updates


# The statements below that must not interleave with a transition under the saga's lock first lock the
# rows such a transition locks, in its order: the first step's row (here), then the saga's (their own
# ``saga`` part). Either one waits for the other, or it sees what the other wrote; never each for the other.
_WITH_FIRST_STEP_LOCKED = """
WITH first_step AS (
    SELECT id FROM sagas_steprecord WHERE saga_id = %s AND index = 0
    FOR KEY SHARE
)"""

# ``core.due_kept`` in SQL: the saga's due time is one ``keep_due`` would leave as it is (between half a
# stall time and a stall time from now). Its values: ``core.due_range()``, the margin and the stall length.
DUE_KEPT = "due_at BETWEEN STATEMENT_TIMESTAMP() + %s AND STATEMENT_TIMESTAMP() + %s"

# What a step's success writes on its row (its attempt's, if the attempt still holds it), given a ``saga``
# part that says the saga may move on.
_STEP_SUCCEEDS = """
    UPDATE sagas_steprecord
    SET status = %s, result = %s, error = '', finished_at = STATEMENT_TIMESTAMP(), may_have_effects = FALSE,
        lease_expires_at = NULL, next_attempt_at = NULL, held_by = NULL, attempt_started_at = NULL
    WHERE saga_id = %s AND index = %s AND status = %s AND attempts = %s AND attempt_started_at = %s
      AND EXISTS (SELECT 1 FROM saga)"""


def _detail(value: dict):
    """An event's detail as the statements below pass it (``SagaEvent.detail`` prepared for the database)."""
    return SagaEvent._meta.get_field("detail").get_db_prep_save(value, connections[DB])


def _step_succeeds(saga_id, index: int, attempt: int, began_at, result: Any, running: str, succeeded: str) -> list:
    """The values of ``_STEP_SUCCEEDS``, in its order."""
    result = StepRecord._meta.get_field("result").get_db_prep_save(result, connections[DB])
    return [succeeded, result, saga_id, index, running, attempt, began_at]


_SUCCEED_STEP = _WITH_FIRST_STEP_LOCKED + """, saga AS (
    SELECT id FROM sagas_sagainstance
    WHERE id = %s AND status = %s AND sweeps = 0 AND """ + DUE_KEPT + """
      AND EXISTS (SELECT 1 FROM first_step)
    FOR KEY SHARE
), done AS (""" + _STEP_SUCCEEDS + """
    RETURNING saga_id, id
)
INSERT INTO sagas_sagaevent (saga_id, step_id, kind, detail, created_at)
SELECT done.saga_id, done.id, event.kind, event.detail, COALESCE(event.at, STATEMENT_TIMESTAMP())
FROM done CROSS JOIN (VALUES (%s::varchar, %s::jsonb, %s::timestamptz), (%s::varchar, %s::jsonb, NULL::timestamptz))
    AS event (kind, detail, at)
"""


def succeed_step_if_running(*, saga_id, index: int, attempt: int, began_at, result: Any, running: str,
                            succeeded: str, due_kept, started: tuple[str, dict], ended: tuple[str, dict]) -> bool:
    """PostgreSQL: one statement that records a step's success and its two events, if all still hold.

    The step is at ``attempt``, ``running`` and its attempt began at
    ``began_at``; its saga is ``running``, counts no sweeps and is due as
    ``keep_due`` would leave it (``due_kept``, ``DUE_KEPT``). Meanwhile the rows a transition
    under the saga's lock locks first, the first step's and the saga's, are
    locked in KEY SHARE mode, in the same order: it waits for every such
    transition, and one that committed first is seen (then nothing is
    written), or they wait for it; never each for the other. The step
    finishes and the events are dated on the database's clock (``started``
    at ``began_at``). True if it was recorded.
    """
    params = [saga_id, saga_id, running, *due_kept,
              *_step_succeeds(saga_id, index, attempt, began_at, result, running, succeeded),
              started[0], _detail(started[1]), began_at,
              ended[0], _detail(ended[1])]
    with cursor() as cur:
        cur.execute(_SUCCEED_STEP, params)
        return cur.rowcount > 0


# What the claim of a step's first attempt writes on its row: its status, one attempt begun now, and the
# holder with its lease (times on the database's clock). Its values: status, lease length, holder.
_FIRST_ATTEMPT_HELD = """
    SET status = %s, attempts = 1, started_at = STATEMENT_TIMESTAMP(), attempt_started_at = STATEMENT_TIMESTAMP(),
        lease_expires_at = STATEMENT_TIMESTAMP() + %s, next_attempt_at = NULL, held_by = %s"""

_CLAIM_PENDING_STEP = """
WITH saga AS (
    SELECT input FROM sagas_sagainstance
    WHERE id = %s AND status = %s AND saga_type = %s AND version = %s AND """ + DUE_KEPT + """
), claimed AS (
    UPDATE sagas_steprecord AS step""" + _FIRST_ATTEMPT_HELD + """
    WHERE step.saga_id = %s AND step.index = %s AND step.name = %s AND step.status = %s AND step.attempts = 0
      AND EXISTS (SELECT 1 FROM saga)
      AND NOT EXISTS (SELECT 1 FROM sagas_steprecord AS earlier
                      WHERE earlier.saga_id = step.saga_id AND earlier.stage < step.stage
                        AND (earlier.status <> %s OR earlier.name <> (%s::varchar[])[earlier.index + 1]))
    RETURNING step.stage, step.attempt_started_at
)
SELECT claimed.attempt_started_at, saga.input,
       (SELECT jsonb_object_agg(earlier.name, earlier.result) FROM sagas_steprecord AS earlier
        WHERE earlier.saga_id = %s AND earlier.stage < claimed.stage AND NOT earlier.may_have_effects)
FROM claimed, saga
"""


def claim_pending_step(*, saga_id, index: int, saga_type: str, version: int, names: list[str], lease, holder: str,
                       due_kept, pending: str, running: str, succeeded: str, saga_running: str):
    """PostgreSQL: one statement that claims a pending step of a running saga, if all still hold.

    The saga is ``saga_type`` v``version``, running and due no sooner than
    ``due_kept`` (as ``keep_due`` would leave it) from now; the step (named ``names[index]``) is pending and
    every step of the earlier stages succeeded (named as ``names`` says).
    The step is then held by ``holder`` for ``lease`` on the database's
    clock. The same conditional UPDATE as ``save_step_if_unchanged`` makes
    after its read, with the read done by the statement itself: what the
    attempt needs comes back with it. Returns (when the attempt began, the
    saga's input as stored, the earlier steps' outputs as stored) or None.
    """
    params = [saga_id, saga_running, saga_type, version, *due_kept,
              running, lease, holder,
              saga_id, index, names[index], pending,
              succeeded, names,
              saga_id]
    with cursor() as cur:
        cur.execute(_CLAIM_PENDING_STEP, params)
        return cur.fetchone()


_CLAIM_FIRST_STEP = """
WITH first_step AS (
    SELECT id FROM sagas_steprecord
    WHERE saga_id = %s AND index = 0 AND name = %s AND status = %s AND attempts = 0
    FOR UPDATE
), started AS (
    UPDATE sagas_sagainstance
    SET status = %s, started_at = COALESCE(started_at, STATEMENT_TIMESTAMP()), updated_at = STATEMENT_TIMESTAMP(),
        sweeps = 0, due_at = CASE WHEN due_at IS NOT NULL AND """ + DUE_KEPT + """ THEN due_at
                                  ELSE STATEMENT_TIMESTAMP() + %s END
    WHERE id = %s AND status = %s AND saga_type = %s AND version = %s AND EXISTS (SELECT 1 FROM first_step)
    RETURNING id, input
), claimed AS (
    UPDATE sagas_steprecord""" + _FIRST_ATTEMPT_HELD + """
    WHERE id IN (SELECT id FROM first_step) AND EXISTS (SELECT 1 FROM started)
    RETURNING attempt_started_at
), logged AS (
    INSERT INTO sagas_sagaevent (saga_id, step_id, kind, detail, created_at)
    SELECT started.id, NULL, %s, %s::jsonb, STATEMENT_TIMESTAMP() FROM started
)
SELECT claimed.attempt_started_at, started.input FROM claimed, started
"""


def claim_first_step(*, saga_id, saga_type: str, version: int, name: str, lease, holder: str, stall_after,
                     due_kept, pending: str, running: str, saga_pending: str, saga_running: str,
                     saga_started: tuple[str, dict]):
    """PostgreSQL: one statement that claims the first step of a saga not yet started, and starts the saga.

    The first step (named ``name``) is locked, if still pending and never
    attempted, before the saga's row, the order every transition under the
    saga's lock takes them; then the saga, if still ``saga_pending`` and of
    ``saga_type`` v``version``, moves to ``saga_running`` (its event
    ``saga_started`` written, ``due_at`` moved ``stall_after`` away if
    closer than ``due_kept`` (as ``keep_due`` would leave it)), and only then is the step held by
    ``holder`` for ``lease``. A saga started by another delivery meanwhile
    is left to the other claims: nothing is written. Returns (when the
    attempt began, the saga's input as stored) or None.
    """
    params = [saga_id, name, pending,
              saga_running, *due_kept, stall_after,
              saga_id, saga_pending, saga_type, version,
              running, lease, holder,
              saga_started[0], _detail(saga_started[1])]
    with cursor() as cur:
        cur.execute(_CLAIM_FIRST_STEP, params)
        return cur.fetchone()


_SUCCEED_LAST_STEP = _WITH_FIRST_STEP_LOCKED + """, saga AS (
    SELECT id FROM sagas_sagainstance
    WHERE id = %s AND status = %s AND parent_id IS NULL AND EXISTS (SELECT 1 FROM first_step)
    FOR NO KEY UPDATE
), done AS (""" + _STEP_SUCCEEDS + """
      AND NOT EXISTS (SELECT 1 FROM sagas_steprecord AS other
                      WHERE other.saga_id = %s AND other.index <> %s AND other.status <> %s)
    RETURNING saga_id, id, name, result, may_have_effects
), finished AS (
    UPDATE sagas_sagainstance AS finished
    SET status = %s, finished_at = STATEMENT_TIMESTAMP(), updated_at = STATEMENT_TIMESTAMP(), due_at = NULL,
        sweeps = 0,
        results = COALESCE((SELECT jsonb_object_agg(other.name, other.result) FROM sagas_steprecord AS other
                            WHERE other.saga_id = done.saga_id AND other.index <> %s
                              AND NOT other.may_have_effects), '{}'::jsonb)
                  || CASE WHEN done.may_have_effects THEN '{}'::jsonb ELSE jsonb_build_object(done.name, done.result) END
    FROM done WHERE finished.id = done.saga_id
)
INSERT INTO sagas_sagaevent (saga_id, step_id, kind, detail, created_at)
SELECT done.saga_id, CASE WHEN event.on_step THEN done.id END, event.kind, event.detail,
       COALESCE(event.at, STATEMENT_TIMESTAMP())
FROM done CROSS JOIN (VALUES (%s::varchar, %s::jsonb, %s::timestamptz, TRUE),
                             (%s::varchar, %s::jsonb, NULL::timestamptz, TRUE),
                             (%s::varchar, %s::jsonb, NULL::timestamptz, FALSE))
    AS event (kind, detail, at, on_step)
"""


def succeed_last_step_if_running(*, saga_id, index: int, attempt: int, began_at, result: Any, running: str,
                                 succeeded: str, saga_running: str, saga_succeeded: str,
                                 started: tuple[str, dict], ended: tuple[str, dict],
                                 saga_ended: tuple[str, dict]) -> bool:
    """PostgreSQL: one statement that records the success of a saga's last step and the saga's, if all still hold.

    As ``succeed_step_if_running`` for the step (this attempt's, still
    ``running``), with every other step ``succeeded``; the saga is no child
    (the end of a child tells its parent: ``core.notify_parent``); the saga's row,
    locked after the first step's as every transition takes them, must be
    ``saga_running``, and moves to ``saga_succeeded`` with its results (the
    outputs of its steps, as ``results_of`` gathers them) and its event.
    True if it was recorded.
    """
    params = [saga_id, saga_id, saga_running,
              *_step_succeeds(saga_id, index, attempt, began_at, result, running, succeeded),
              saga_id, index, succeeded,
              saga_succeeded, index,
              started[0], _detail(started[1]), began_at,
              ended[0], _detail(ended[1]),
              saga_ended[0], _detail(saga_ended[1])]
    with cursor() as cur:
        cur.execute(_SUCCEED_LAST_STEP, params)
        return cur.rowcount > 0


_CLAIM_COMPENSATION = _WITH_FIRST_STEP_LOCKED + """, saga AS (
    SELECT input FROM sagas_sagainstance
    WHERE id = %s AND status = %s AND saga_type = %s AND version = %s AND sweeps = 0
      AND """ + DUE_KEPT + """ AND EXISTS (SELECT 1 FROM first_step)
    FOR KEY SHARE
), claimed AS (
    UPDATE sagas_steprecord AS step
    SET status = %s, compensation_attempts = 1, lease_expires_at = STATEMENT_TIMESTAMP() + %s,
        next_attempt_at = NULL, held_by = %s
    WHERE step.saga_id = %s AND step.index = %s AND step.status = %s AND step.has_compensation
      AND step.compensation_attempts = 0 AND EXISTS (SELECT 1 FROM saga)
      AND NOT EXISTS (SELECT 1 FROM sagas_steprecord AS other
                      WHERE other.saga_id = step.saga_id
                        AND (other.name IS DISTINCT FROM (%s::varchar[])[other.index + 1]
                             OR other.stage > step.stage AND (other.status = %s OR other.has_compensation
                                 AND (other.status = ANY(%s::varchar[]) OR other.status = %s AND other.may_have_effects))))
    RETURNING step.id, step.saga_id, step.stage, step.result
), logged AS (
    INSERT INTO sagas_sagaevent (saga_id, step_id, kind, detail, created_at)
    SELECT claimed.saga_id, claimed.id, %s, %s::jsonb, STATEMENT_TIMESTAMP() FROM claimed
)
SELECT saga.input, claimed.result,
       (SELECT jsonb_object_agg(earlier.name, earlier.result) FROM sagas_steprecord AS earlier
        WHERE earlier.saga_id = claimed.saga_id AND earlier.stage < claimed.stage
          AND earlier.status = ANY(%s::varchar[]) AND NOT earlier.may_have_effects)
FROM claimed, saga
"""


def claim_compensation(*, saga_id, index: int, saga_type: str, version: int, names: list[str], lease, holder: str,
                       due_kept, compensating: str, succeeded: str, running: str, failed: str,
                       undo_pending: list[str], forward_done: list[str], saga_compensating: str,
                       started: tuple[str, dict]):
    """PostgreSQL: one statement that claims the first attempt of a step's compensation, if all still hold.

    The saga is ``saga_compensating``, of ``saga_type`` v``version`` (its
    steps named as ``names``), counts no sweeps and is due no sooner than
    ``due_kept`` (as ``keep_due`` would leave it); the step ``succeeded`` and has a compensation never
    attempted; no step of a later stage is ``running`` or left to undo
    (``undo_pending``, or ``failed`` with effects: as ``to_undo`` says). The
    first step's row and the saga's are locked in ``KEY SHARE`` mode
    meanwhile, in the order every locked transition takes them. The step
    then moves to ``compensating``, held by ``holder`` for ``lease``, with
    its event ``started``. Returns (the saga's input, the step's output, the
    earlier stages' outputs: those ``forward_done`` with no effects left in
    doubt), each as stored, or None.
    """
    params = [saga_id,
              saga_id, saga_compensating, saga_type, version, *due_kept,
              compensating, lease, holder,
              saga_id, index, succeeded,
              names, running, undo_pending, failed,
              started[0], _detail(started[1]),
              forward_done]
    with cursor() as cur:
        cur.execute(_CLAIM_COMPENSATION, params)
        return cur.fetchone()


_COMPENSATED = _WITH_FIRST_STEP_LOCKED + """, saga AS (
    SELECT id FROM sagas_sagainstance
    WHERE id = %s AND status = %s AND parent_id IS NULL AND sweeps = 0 AND """ + DUE_KEPT + """
      AND EXISTS (SELECT 1 FROM first_step)
    FOR NO KEY UPDATE
), done AS (
    UPDATE sagas_steprecord
    SET status = %s, compensated_at = STATEMENT_TIMESTAMP(), compensation_error = '',
        lease_expires_at = NULL, next_attempt_at = NULL, held_by = NULL
    WHERE saga_id = %s AND index = %s AND status = %s AND compensation_attempts = %s AND EXISTS (SELECT 1 FROM saga)
    RETURNING saga_id, id
), finished AS (
    UPDATE sagas_sagainstance AS finished
    SET status = %s, finished_at = STATEMENT_TIMESTAMP(), updated_at = STATEMENT_TIMESTAMP(), due_at = NULL,
        sweeps = 0,
        results = COALESCE((SELECT jsonb_object_agg(other.name, other.result) FROM sagas_steprecord AS other
                            WHERE other.saga_id = done.saga_id AND other.status = ANY(%s::varchar[])
                              AND NOT other.may_have_effects), '{}'::jsonb)
    FROM done
    WHERE finished.id = done.saga_id
      AND NOT EXISTS (SELECT 1 FROM sagas_steprecord AS other
                      WHERE other.saga_id = done.saga_id AND other.index <> %s
                        AND (other.status = %s OR other.has_compensation
                             AND (other.status = ANY(%s::varchar[]) OR other.status = %s AND other.may_have_effects)))
    RETURNING finished.id
)
INSERT INTO sagas_sagaevent (saga_id, step_id, kind, detail, created_at)
SELECT done.saga_id, done.id, %s, %s::jsonb, STATEMENT_TIMESTAMP() FROM done
UNION ALL
SELECT finished.id, NULL, %s, %s::jsonb, STATEMENT_TIMESTAMP() FROM finished
"""


def compensated_if_compensating(*, saga_id, index: int, attempt: int, due_kept, compensating: str,
                                compensated: str, running: str, failed: str, undo_pending: list[str],
                                forward_done: list[str], saga_compensating: str, saga_compensated: str,
                                ended: tuple[str, dict], saga_ended: tuple[str, dict]) -> bool:
    """PostgreSQL: one statement that records a compensation's success, and the saga's end if it was the last.

    The step is ``compensating`` at ``attempt``; the saga is no child (the
    end of a child tells its parent: ``core.notify_parent``); the saga, locked after the
    first step's row as every transition takes them, is
    ``saga_compensating``, counts no sweeps and is due no sooner than
    ``due_kept`` (as ``keep_due`` would leave it). The step moves to ``compensated`` with its event
    ``ended``; if no other step is ``running`` or left to undo (as
    ``claim_compensation`` reads it), the saga moves to
    ``saga_compensated`` too, with its results (the outputs of the steps
    ``forward_done``, as ``results_of`` gathers them) and its event
    ``saga_ended``. True if it was recorded.
    """
    params = [saga_id,
              saga_id, saga_compensating, *due_kept,
              compensated, saga_id, index, compensating, attempt,
              saga_compensated, forward_done,
              index, running, undo_pending, failed,
              ended[0], _detail(ended[1]), saga_ended[0], _detail(saga_ended[1])]
    with cursor() as cur:
        cur.execute(_COMPENSATED, params)
        return cur.rowcount > 0
