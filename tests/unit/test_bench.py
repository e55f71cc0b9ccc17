"""The benchmark's sagas and its in-process counts (no broker, no worker). No time is asserted."""
import pytest
from django.db import connection

from sagas import registry
from sagas.bench import inprocess
from sagas.bench.workload import BENCH_SAGA, BENCH_STEPS, build_variant, saga_name
from sagas.models import SagaInstance

# The saga types exist only where their command (or its setting) registers them.
pytestmark = pytest.mark.usefixtures("bench_sagas")


def test_the_default_bench_saga_has_four_steps_and_its_first_version_stays():
    assert BENCH_STEPS == 4
    assert [s.name for s in registry.get(BENCH_SAGA).steps] == ["s0", "s1", "s2", "s3"]
    assert len(registry.get(BENCH_SAGA, 1).steps) == 3


def test_variants_are_named_by_their_shape_and_built_from_the_name():
    assert saga_name() == BENCH_SAGA
    assert saga_name(steps=7) == "sagas.bench.s7"
    assert saga_name(parallel=200) == "sagas.bench.p200"

    assert [s.name for s in registry.get("sagas.bench.s2").steps] == ["s0", "s1"]
    stage = registry.get("sagas.bench.p3")
    assert stage.stages == [[0, 1, 2]] and all(stage.is_parallel(i) for i in range(3))


@pytest.mark.parametrize("name", ["sagas.bench.s0", "sagas.bench.p1001", "sagas.bench.x3", "sagas.bench.s03"])
def test_names_outside_the_variants_build_nothing(name):
    assert build_variant(name) is None


@pytest.mark.parametrize("fail, expected", [(False, 0), (True, 1)])
def test_statements_are_counted_with_transaction_control(transactional_db, fail, expected):
    created = []
    counts = inprocess.count_statements(steps=2, parallel=None, fail=fail, sagas=1, created=created)

    assert counts.steps == 2 and counts.sagas == 1
    assert counts.by_kind.get("BEGIN", 0) == counts.by_kind.get("COMMIT", 0) == counts.transactions
    if fail or connection.vendor != "postgresql":  # on PostgreSQL a succeeding saga's steps open no transaction
        assert counts.transactions > 0
    assert counts.per_step == (counts.forward + counts.compensation) / 2
    assert (counts.compensation > 0) == bool(expected)
    assert SagaInstance.objects.filter(pk__in=created).count() == 2  # one not counted, one counted


def test_a_parallel_stage_is_timed_per_member_against_ten_members(transactional_db):
    figures = inprocess.parallel_linearity(3, repeats=1, created=[])

    assert figures["members"]["members"] == 3 and figures["reference"]["members"] == 10
    assert figures["members"]["statements_per_member"] > 0
    assert figures["member_cost_ratio"] > 0
