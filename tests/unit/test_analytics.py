"""Saga analytics over rows written directly: counts, rates, percentiles, errors, windows."""
import random
from datetime import timedelta

import pytest
from django.utils import timezone

from sagas import analytics
from sagas.models import SagaInstance, SagaStatus, StepRecord, StepStatus

NOW = timezone.now()


def saga(saga_type="shop.order", status=SagaStatus.SUCCEEDED, seconds=1.0, error="", created=NOW, steps=(),
         parent=None):
    """A saga row (a child of ``parent`` if given); ``steps`` is a list of (status, attempts, seconds, error)."""
    finished = status in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
    instance = SagaInstance.objects.create(
        saga_type=saga_type, status=status, error=error,
        started_at=created, finished_at=created + timedelta(seconds=seconds) if finished else None,
        parent=parent, depth=parent.depth + 1 if parent else 0,
    )
    SagaInstance.objects.filter(pk=instance.pk).update(created_at=created)
    for index, (step_status, attempts, step_seconds, step_error) in enumerate(steps):
        StepRecord.objects.create(
            saga=instance, index=index, name=f"s{index}", status=step_status, attempts=attempts, error=step_error,
            started_at=created if attempts else None,
            finished_at=created + timedelta(seconds=step_seconds) if step_seconds is not None else None,
        )
    return instance


def by_type(**kwargs) -> dict:
    return {s.saga_type: s for s in analytics.saga_type_stats(**kwargs)}


def test_counts_and_rates_per_saga_type(db):
    for _ in range(3):
        saga(status=SagaStatus.SUCCEEDED)
    saga(status=SagaStatus.COMPENSATED, error="step pay failed: declined")
    saga(status=SagaStatus.RUNNING)
    saga("hr.hire", status=SagaStatus.FAILED, error="compensation of step a failed")

    stats = by_type()

    order = stats["shop.order"]
    assert order.total == 5 and order.finished == 4 and order.active == 1
    assert order.counts[SagaStatus.SUCCEEDED] == 3 and order.counts[SagaStatus.PENDING] == 0
    assert order.success_rate == pytest.approx(0.75)
    assert order.compensation_rate == pytest.approx(0.25)
    assert stats["hr.hire"].success_rate == 0.0 and stats["hr.hire"].compensation_rate == 1.0


def test_rates_are_none_when_nothing_finished(db):
    saga(status=SagaStatus.RUNNING)
    stats = by_type()["shop.order"]
    assert stats.success_rate is None and stats.p50_seconds is None


def test_p50_and_p95_durations_of_finished_sagas(db):
    for seconds in range(1, 21):  # 1..20 s
        saga(seconds=seconds)
    stats = by_type()["shop.order"]
    assert stats.p50_seconds == pytest.approx(10.5)
    assert stats.p95_seconds == pytest.approx(19.05)


def test_most_frequent_errors_first(db):
    for _ in range(3):
        saga(status=SagaStatus.COMPENSATED, error="out of stock")
    saga(status=SagaStatus.COMPENSATED, error="card declined")
    saga(status=SagaStatus.COMPENSATED, error="card declined")
    saga(status=SagaStatus.COMPENSATED, error="address unknown")

    errors = by_type(top_errors=2)["shop.order"].top_errors
    assert [(e.error, e.count) for e in errors] == [("out of stock", 3), ("card declined", 2)]


def test_time_window_and_type_filter(db):
    saga(created=NOW - timedelta(days=2))
    saga(created=NOW - timedelta(hours=1))
    saga("hr.hire", created=NOW - timedelta(hours=1))

    recent = by_type(since=NOW - timedelta(days=1))
    assert recent["shop.order"].total == 1
    older = by_type(until=NOW - timedelta(days=1))
    assert set(older) == {"shop.order"} and older["shop.order"].total == 1
    assert set(by_type(saga_type="hr.hire")) == {"hr.hire"}
    assert set(by_type(saga_type=["hr.hire", "shop.order"])) == {"hr.hire", "shop.order"}


def test_overall_stats_add_up_every_type(db):
    saga(status=SagaStatus.SUCCEEDED)
    saga("hr.hire", status=SagaStatus.COMPENSATED, error="no desk")
    overall = analytics.overall_stats()
    assert overall.saga_type == analytics.ALL_TYPES
    assert overall.total == 2 and overall.success_rate == 0.5
    assert overall.top_errors[0].error == "no desk"
    assert overall.as_dict()["active"] == 0


def test_step_stats_count_outcomes_retries_and_errors(db):
    ok = (StepStatus.SUCCEEDED, 1, 0.5, "")
    saga(steps=[ok, (StepStatus.SUCCEEDED, 3, 2.0, "")])
    saga(status=SagaStatus.COMPENSATED, steps=[(StepStatus.COMPENSATED, 1, 0.5, ""),
                                               (StepStatus.FAILED, 1, 0.1, "PermanentError: declined")])
    saga(status=SagaStatus.COMPENSATED, steps=[(StepStatus.FAILED, 2, 1.0, "PermanentError: no stock"),
                                               (StepStatus.SKIPPED, 0, None, "")])

    first, second = analytics.step_stats(saga_type="shop.order")

    assert (first.step, first.index) == ("s0", 0)
    assert (first.succeeded, first.failed, first.compensated) == (2, 1, 1)
    assert first.success_rate == pytest.approx(2 / 3)
    assert first.compensation_rate == pytest.approx(0.5)
    assert first.retried_attempts == 1
    assert [e.error for e in first.top_errors] == ["PermanentError: no stock"]
    assert second.counts[StepStatus.SKIPPED] == 1
    assert (second.succeeded, second.failed, second.retried_attempts) == (1, 1, 2)
    assert second.p50_seconds == pytest.approx(1.05)


def test_percentile_interpolates_and_handles_nothing():
    assert analytics.percentile([], 0.5) is None
    assert analytics.percentile([3.0], 0.95) == 3.0
    assert analytics.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_percentiles_computed_in_the_database_match_percentile_of_every_duration(db):
    rnd = random.Random(5)
    micros = {"shop.order": [rnd.randint(1_000, 90_000_000) for _ in range(37)],
              "hr.hire": [rnd.randint(1_000, 9_000_000) for _ in range(101)]}
    for saga_type, values in micros.items():
        for us in values:
            saga(saga_type, seconds=us / 1e6, steps=[(StepStatus.SUCCEEDED, 1, us // 2 / 1e6, "")])

    stats, steps = by_type(), {s.saga_type: s for s in analytics.step_stats()}

    for saga_type, values in micros.items():
        seconds, halves = [us / 1e6 for us in values], [us // 2 / 1e6 for us in values]
        assert stats[saga_type].p50_seconds == pytest.approx(analytics.percentile(seconds, 0.50), abs=1e-9)
        assert stats[saga_type].p95_seconds == pytest.approx(analytics.percentile(seconds, 0.95), abs=1e-9)
        assert steps[saga_type].p95_seconds == pytest.approx(analytics.percentile(halves, 0.95), abs=1e-9)
    everything = [us / 1e6 for values in micros.values() for us in values]
    assert analytics.overall_stats().p95_seconds == pytest.approx(analytics.percentile(everything, 0.95), abs=1e-9)


def test_errors_tied_in_count_are_ranked_by_code_point_whatever_the_collation(db):
    for text in ("b declined", "B declined", "a declined"):
        saga(status=SagaStatus.COMPENSATED, error=text)

    errors = by_type(top_errors=2)["shop.order"].top_errors

    assert [e.error for e in errors] == ["B declined", "a declined"]


def test_default_window_is_the_day_before_until_or_now():
    now = timezone.now()
    assert analytics.default_since(None, now) == now - timedelta(hours=24)
    assert analytics.default_since(now - timedelta(days=3), now) == now - timedelta(days=4)


# --- roots and children -------------------------------------------------------------------


@pytest.fixture
def family(db):
    """Two onboardings (roots), each with an IT provisioning as its child; one provisioning started by hand."""
    for status in (SagaStatus.SUCCEEDED, SagaStatus.RUNNING):
        parent = saga("hr.onboarding", status=status)
        saga("it.provisioning", status=SagaStatus.SUCCEEDED, seconds=2.0, parent=parent,
             steps=[(StepStatus.SUCCEEDED, 1, 1.0, "")])
    saga("it.provisioning", status=SagaStatus.COMPENSATED, seconds=9.0, error="no laptop left",
         steps=[(StepStatus.FAILED, 1, 3.0, "no laptop left")])


def test_children_count_under_their_own_type_and_say_how_many_were_children(family):
    stats = by_type()

    assert (stats["it.provisioning"].total, stats["it.provisioning"].roots, stats["it.provisioning"].children) == (3, 1, 2)
    assert (stats["hr.onboarding"].total, stats["hr.onboarding"].roots, stats["hr.onboarding"].children) == (2, 2, 0)
    overall = analytics.overall_stats()
    assert (overall.total, overall.roots, overall.children) == (5, 3, 2)
    assert {"roots": 1, "children": 2}.items() <= stats["it.provisioning"].as_dict().items()


def test_root_false_counts_only_child_sagas_and_root_true_only_roots(family):
    children = by_type(root=False)
    roots = by_type(root=True)

    assert list(children) == ["it.provisioning"]
    provisioning = children["it.provisioning"]
    assert (provisioning.total, provisioning.success_rate, provisioning.p50_seconds) == (2, 1.0, 2.0)
    assert provisioning.top_errors == []  # the compensated one was started by hand
    assert roots["it.provisioning"].total == 1 and roots["it.provisioning"].compensation_rate == 1.0
    assert roots["hr.onboarding"].total == 2
    assert analytics.overall_stats(root=False).total == 2
    assert [(s.saga_type, s.succeeded, s.failed) for s in analytics.step_stats(root=False)] == [
        ("it.provisioning", 2, 0)]
    assert [(s.saga_type, s.succeeded, s.failed) for s in analytics.step_stats(root=True)] == [
        ("it.provisioning", 0, 1)]


def test_a_child_whose_parent_was_pruned_is_still_a_child(db):
    parent = saga("hr.onboarding")
    child = saga("it.provisioning", parent=parent)
    parent.delete()  # the child's parent goes to null (SET_NULL); its depth says what it was

    child.refresh_from_db()
    assert child.parent_id is None
    assert by_type(root=False)["it.provisioning"].children == 1
    assert "it.provisioning" not in by_type(root=True)
