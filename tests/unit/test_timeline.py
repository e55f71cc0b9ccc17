"""The timeline picture: bars built from the audit trail, drawn as SVG."""
import re
from datetime import datetime, timedelta, timezone

from sagas.models import EventKind, SagaEvent, StepRecord, StepStatus
from sagas.timeline import ATTEMPT, COMPENSATION, MIN_BAR_PX, RETRY_WAIT, ChildRun, build_bars, render_chart, \
    rows_of, tick_step, timeline_chart

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def step(pk, index, name, status=StepStatus.SUCCEEDED, group=None, **fields):
    return StepRecord(pk=pk, index=index, name=name, status=status, parallel_group=group, **fields)


def ev(pk, record, kind, seconds, **detail):
    return SagaEvent(pk=pk, step_id=record.pk if record else None, kind=kind, detail=detail, created_at=at(seconds))


def test_each_attempt_and_retry_wait_is_a_bar_coloured_by_outcome():
    pay = step(1, 0, "charge_payment")
    events = [
        ev(1, pay, EventKind.STEP_ATTEMPT_FAILED, 1.0, attempt=1, error="TimeoutError: gateway", retry_in=0.5),
        ev(2, pay, EventKind.STEP_SUCCEEDED, 2.5, attempt=2),
        # step_started rows are inserted when their attempt ends, so after the events above: order by time.
        ev(3, pay, EventKind.STEP_STARTED, 0.2, attempt=1),
        ev(4, pay, EventKind.STEP_STARTED, 1.5, attempt=2),
    ]

    bars = build_bars(events, [pay], now=at(10))

    assert [(b.kind, b.outcome, b.start, b.end) for b in bars] == [
        (ATTEMPT, "retried", at(0.2), at(1.0)),
        (RETRY_WAIT, "wait", at(1.0), at(1.5)),
        (ATTEMPT, "succeeded", at(1.5), at(2.5)),
    ]
    assert bars[0].text == "Attempt 1 of charge_payment failed: TimeoutError: gateway; retry in 0.5 s."


def test_compensation_attempts_are_bars_on_the_step_row():
    hotel = step(1, 0, "book_hotel", StepStatus.COMPENSATED)
    events = [
        ev(1, hotel, EventKind.STEP_STARTED, 0, attempt=1),
        ev(2, hotel, EventKind.STEP_SUCCEEDED, 1, attempt=1),
        ev(3, hotel, EventKind.COMPENSATION_STARTED, 2, attempt=1),
        ev(4, hotel, EventKind.COMPENSATION_ATTEMPT_FAILED, 3, attempt=1, error="boom", retry_in=1),
        ev(5, hotel, EventKind.COMPENSATION_STARTED, 4, attempt=2),
        ev(6, hotel, EventKind.STEP_COMPENSATED, 5, attempt=2),
    ]

    bars = build_bars(events, [hotel], now=at(10))

    assert [(b.kind, b.outcome) for b in bars] == [
        (ATTEMPT, "succeeded"), (COMPENSATION, "compensation-retried"), (RETRY_WAIT, "wait"),
        (COMPENSATION, "compensated"),
    ]


def test_a_step_that_fails_for_good_ends_red_and_a_lost_attempt_purple():
    a, b = step(1, 0, "a", StepStatus.FAILED), step(2, 1, "b", StepStatus.FAILED)
    events = [
        ev(1, a, EventKind.STEP_STARTED, 0, attempt=1),
        ev(2, a, EventKind.STEP_FAILED, 1, attempts=1, error="refused", permanent=True),
        ev(3, b, EventKind.STEP_STARTED, 0, attempt=1),
        ev(4, b, EventKind.STEP_ATTEMPT_LOST, 2, attempt=1),
        ev(5, b, EventKind.STEP_FAILED, 2, attempts=1, error="lost"),
    ]

    outcomes = [(bar.step_index, bar.outcome) for bar in build_bars(events, [a, b], now=at(3))]

    assert outcomes == [(0, "failed"), (1, "lost")]


def test_an_attempt_in_progress_runs_from_its_record_to_now():
    running = step(1, 0, "slow", StepStatus.RUNNING, attempts=1, attempt_started_at=at(1))

    bars = build_bars([], [running], now=at(4))

    assert [(b.outcome, b.start, b.end) for b in bars] == [("running", at(1), at(4))]


def test_parallel_members_get_rows_of_their_own():
    records = [step(1, 0, "reserve"), step(2, 1, "email", group="notify"), step(3, 2, "ledger", group="notify")]

    assert [row.label for row in rows_of(records)] == ["reserve", "notify › email", "notify › ledger"]


def test_chart_has_one_bar_per_attempt_with_a_sentence_for_a_tooltip():
    pay = step(1, 0, "charge_payment")
    events = [ev(1, pay, EventKind.STEP_STARTED, 0, attempt=1), ev(2, pay, EventKind.STEP_SUCCEEDED, 1, attempt=1)]

    chart = str(timeline_chart(events, [pay], start=at(0), end=at(2), now=at(3)))

    assert chart.startswith('<div class="saga-timeline-chart"')
    assert len(re.findall(r'<span class="bar ', chart)) == 1
    assert 'data-outcome="succeeded"' in chart
    assert "charge_payment succeeded on attempt 1." in chart


def test_a_bar_of_a_millisecond_in_a_long_saga_keeps_a_width_of_a_few_pixels():
    undo = step(1, 0, "undo_me", StepStatus.COMPENSATED)
    events = [ev(1, undo, EventKind.COMPENSATION_STARTED, 30, attempt=1),
              ev(2, undo, EventKind.STEP_COMPENSATED, 30.001, attempt=1)]

    chart = str(render_chart(build_bars(events, [undo], now=at(60)), rows_of([undo]), start=at(0), end=at(60)))

    width = re.search(r'class="bar bar-compensation[^>]*style="[^"]*width:max\(([0-9.]+)%, (\d+)px\)', chart)
    assert float(width.group(1)) < 0.01 and int(width.group(2)) == MIN_BAR_PX >= 3


def test_a_child_saga_is_a_linked_bar_on_a_row_under_its_step():
    kid = step(1, 0, "kid")
    run = ChildRun(0, "child tests.three_steps 1a2b3c4d", "/admin/child/", "succeeded", at(1), at(3), "its run")

    chart = str(render_chart([], rows_of([kid]), start=at(0), end=at(4), children=[run]))

    assert chart.index("#0 kid") < chart.index("child tests.three_steps 1a2b3c4d")
    assert re.search(r'<a class="bar bar-child outcome-succeeded"[^>]*href="/admin/child/"[^>]*'
                     r'style="left:min\(25.000%[^"]*width:max\(50.000%', chart)


def test_chart_escapes_names_and_errors():
    evil = step(1, 0, "<script>")
    events = [ev(1, evil, EventKind.STEP_STARTED, 0, attempt=1),
              ev(2, evil, EventKind.STEP_FAILED, 1, attempts=1, error="<b>&")]

    chart = str(render_chart(build_bars(events, [evil], now=at(2)), rows_of([evil]), start=at(0), end=at(2)))

    assert "<script>" not in chart and "<b>" not in chart
    assert "&lt;script&gt;" in chart


def test_axis_ticks_are_round_and_few():
    assert tick_step(0.8) == 0.1
    assert tick_step(45) == 10
    assert tick_step(3 * 3600) == 1800
