"""On SQLite every datetime is stored with its fraction of a second (``config.backends.sqlite3``)."""
from datetime import datetime, timezone

import pytest
from django.db import connection
from django.db.models.functions import Now

from sagas import start_saga
from sagas.models import EventKind, SagaEvent

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite keeps datetimes as text")


def stored(event_id) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT created_at || '' FROM sagas_sagaevent WHERE id = %s", [event_id])
        return cursor.fetchone()[0]


def test_a_whole_second_is_written_with_its_fraction_like_any_other_time(db):
    saga = start_saga("tests.three_steps", input={})
    whole = SagaEvent.objects.create(saga=saga, kind=EventKind.STEP_STARTED,
                                     created_at=datetime(2026, 12, 2, 4, 0, 0, tzinfo=timezone.utc))
    fine = SagaEvent.objects.create(saga=saga, kind=EventKind.STEP_STARTED,
                                    created_at=datetime(2026, 12, 2, 4, 0, 0, 123456, tzinfo=timezone.utc))
    clock = SagaEvent.objects.create(saga=saga, kind=EventKind.STEP_STARTED, created_at=Now())

    assert stored(whole.pk) == "2026-12-02 04:00:00.000000"
    assert stored(fine.pk) == "2026-12-02 04:00:00.123456"
    assert len(stored(clock.pk)) == len("2026-12-02 04:00:00.000")  # the database's clock: milliseconds


def test_an_event_at_the_same_millisecond_as_the_saga_created_sorts_after_it(db):
    saga = start_saga("tests.three_steps", input={})
    created = saga.events.get(kind=EventKind.SAGA_CREATED)
    # The database's clock on a whole second, as start_saga's Now() writes it...
    with connection.cursor() as cursor:
        cursor.execute("UPDATE sagas_sagaevent SET created_at = %s WHERE id = %s", ["2026-12-02 04:00:00.000", created.pk])
    # ...and the next transition's event, dated by that same clock read back (db_now) and written by Django.
    SagaEvent.objects.create(saga=saga, kind=EventKind.SAGA_STARTED,
                             created_at=datetime(2026, 12, 2, 4, 0, 0, tzinfo=timezone.utc))

    kinds = list(saga.events.order_by("created_at", "id").values_list("kind", flat=True))

    assert kinds == [EventKind.SAGA_CREATED, EventKind.SAGA_STARTED]
