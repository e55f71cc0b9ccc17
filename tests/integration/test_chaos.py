"""saga_chaos end to end at the settings in force: killed pool children and workers, a restarted broker,
and the fan-out and long-step workloads.

The command runs in a process of its own (it points its Celery app at a
private broker and queue) on the test database, with workers and a beat of
its own. No time is asserted here: the command's own verdict holds every
recovery to --max-recovery.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from sagas.chaos import (
    CHAOS_SAGA,
    FANOUT_SAGA,
    LONG_SAGA,
    NESTED_CHILD_SAGA,
    NESTED_SAGA,
    check_effects,
    effects_left_behind,
)
from sagas.invariants import check_sagas
from sagas.models import FINAL_SAGA_STATUSES, SagaInstance
from sagas.workers import database_url
from tests.helpers import ON_POSTGRESQL

pytestmark = [pytest.mark.integration, pytest.mark.alone]  # recoveries within bounds: nothing else running

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
AMQP_AT = f"{urlsplit(AMQP_URL).hostname}:{urlsplit(AMQP_URL).port or 5672}"
SAGAS = 16
# Two faults of each kill kind (and a broker restart with its own Redis), one every
# 6 s, sagas started over that window: about a minute when every saga a fault
# catches moves again within the default --max-recovery of 30 s.
SMALL_RUN = ["--sagas", str(SAGAS), "--workers", "2", "--concurrency", "2", "--kills", "2",
             "--step-seconds", "1", "--fault-interval", "6", "--max-recovery", "30", "--timeout", "150",
             "--seed", "7", "--json"]


def answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1).close()
        return True
    except OSError:
        return False


def run_chaos(*extra: str, base: list[str] = SMALL_RUN) -> tuple[subprocess.CompletedProcess, dict]:
    # The deployment's settings, not the test suite's: only the database is the test one.
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "config.settings"}
    run = subprocess.run([sys.executable, "manage.py", "saga_chaos", *base, *extra],
                         cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=330)
    lines = run.stdout.strip().splitlines()
    figures = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return run, figures


def assert_passed(run: subprocess.CompletedProcess, figures: dict) -> None:
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert figures["passed"] and figures["lost"] == 0
    assert "saga_chaos: PASS: no saga lost, no effect applied twice or left in place" in run.stdout
    sagas = SagaInstance.objects.filter(saga_type=CHAOS_SAGA)
    assert sagas.count() == SAGAS
    assert sagas.filter(status__in=FINAL_SAGA_STATUSES).count() == SAGAS
    assert all(check.passed for check in check_sagas(sagas) + check_effects(sagas))
    for kind in ("pool child", "whole worker"):
        assert figures["faults"][kind]["faults"] == 2 and figures["faults"][kind]["affected"] > 0


# saga_chaos starts a redis-server of its own (a broker it can restart); the runs that guard PostgreSQL's row
# locks, or whose rule is the same on both databases, run there only (ON_POSTGRESQL), to keep the suite's time.
needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None,
                                        reason="saga_chaos runs a redis-server of its own")


@pytest.mark.timeout(360)
@needs_redis_server
def test_chaos_run_with_its_own_redis_loses_no_saga_and_recovers_in_time(transactional_db):
    run, figures = run_chaos("--broker-restarts", "1")

    assert_passed(run, figures)
    assert figures["faults"]["broker restart"]["faults"] == 1


@pytest.mark.timeout(360)
@pytest.mark.skipif(not answers(AMQP_URL), reason=f"no RabbitMQ answers at {AMQP_AT}")
@pytest.mark.skipif(not ON_POSTGRESQL, reason=(
    "what it guards is the broker's (acknowledgements and redelivery through RabbitMQ), the same whatever the "
    "database; run on PostgreSQL only, to keep the suite's time (the run with its own Redis covers SQLite)"))
def test_chaos_run_through_rabbitmq_loses_no_saga_and_recovers_in_time(transactional_db):
    run, figures = run_chaos("--broker-url", AMQP_URL)

    assert_passed(run, figures)
    assert "broker restart skipped: an external broker" in run.stdout
    assert figures["faults"]["broker restart"]["faults"] == 0


# Eight fan-out sagas (24 members of 0.05 s each, one refusing in most of them)
# under a pool-child kill and a whole-worker kill: about 40 s.
FANOUT_RUN = ["--workload", "fanout", "--fanout-sagas", "8", "--workers", "2", "--concurrency", "2",
              "--kills", "1", "--broker-restarts", "0", "--fault-interval", "6", "--max-recovery", "30",
              "--timeout", "120", "--seed", "7", "--json"]
# Two long-step sagas (a 25 s step: longer than the stall time and a sweep, so
# the sweeper looks at it while it runs), 17.5 s apart: the first's next message
# lost with the broker, the second's worker killed halfway through its long
# step. About 75 s when each moves again within 30 s; --timeout 90 stops a saga
# that waits for its old lease (about 310 s).
LONG_RUN = ["--workload", "long", "--long-sagas", "2", "--long-seconds", "25", "--workers", "2",
            "--concurrency", "2", "--kills", "0", "--broker-restarts", "0", "--max-recovery", "30",
            "--timeout", "90", "--seed", "7", "--json"]


# Four nested sagas (a parent and two children each, one child in a Parallel; steps of 0.5 s), most of them
# failing after their children succeeded, under a pool-child kill and a whole-worker kill: about 40 s.
NESTED_RUN = ["--workload", "nested", "--nested-sagas", "4", "--nested-failure-share", "0.75", "--step-seconds",
              "0.5", "--workers", "2", "--concurrency", "2", "--kills", "1", "--broker-restarts", "0",
              "--fault-interval", "6", "--max-recovery", "30", "--timeout", "120", "--seed", "7", "--json"]


def assert_workload_passed(run: subprocess.CompletedProcess, figures: dict, saga_type: str, count: int) -> None:
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    assert figures["passed"] and figures["lost"] == 0 and figures["effects_left"] == 0
    assert figures["stand_still"]["max_s"] <= 30
    sagas = SagaInstance.objects.filter(saga_type=saga_type)
    assert sagas.count() == count
    assert effects_left_behind(sagas) == []
    assert all(check.passed for check in check_sagas(sagas) + check_effects(sagas))


@pytest.mark.timeout(240)
@needs_redis_server
@pytest.mark.skipif(not ON_POSTGRESQL, reason=(
    "what it guards is PostgreSQL's: concurrent claims of a Parallel's members under row locks (SQLite "
    "has one writer at a time); skipped there to keep the suite's time"))
def test_chaos_fanout_run_leaves_no_effect_of_a_compensated_saga_in_place(transactional_db):
    run, figures = run_chaos(base=FANOUT_RUN)

    assert_workload_passed(run, figures, FANOUT_SAGA, 8)
    assert figures["faults"]["pool child"]["faults"] == 1 and figures["faults"]["whole worker"]["faults"] == 1
    assert figures["statuses"].get("compensated", 0) > 0


@pytest.mark.timeout(240)
@needs_redis_server
@pytest.mark.skipif(not ON_POSTGRESQL, reason=(
    "the rule it guards (a saga due a stall time after a long step) is the database's clock and the engine's, "
    "the same on SQLite (tests/unit/test_reliability_review.py runs it on both); one database keeps the suite's time"))
def test_chaos_long_step_run_moves_again_within_30s_of_a_lost_message(transactional_db):
    run, figures = run_chaos(base=LONG_RUN)

    assert figures["faults"]["lost message"]["faults"] == 1, run.stdout[-5000:]
    assert figures["faults"]["long-step kill"]["faults"] == 1, run.stdout[-5000:]
    assert_workload_passed(run, figures, LONG_SAGA, 2)


@pytest.mark.timeout(240)
@needs_redis_server
@pytest.mark.skipif(not ON_POSTGRESQL, reason=(
    "the tree's rules are the engine's, the same on SQLite (tests/integration/test_child_sagas.py and "
    "tests/integration/test_corporate_children.py run children there); one database keeps the suite's time"))
def test_chaos_nested_run_undoes_children_as_a_whole_and_keeps_every_tree_consistent(transactional_db):
    run, figures = run_chaos(base=NESTED_RUN)

    assert_workload_passed(run, figures, NESTED_SAGA, 4)
    assert "PASS  parent sagas agree with their child sagas" in run.stdout
    children = SagaInstance.objects.filter(saga_type=NESTED_CHILD_SAGA)
    assert figures["child_sagas"] == children.count() >= 4
    assert effects_left_behind(children) == []
    assert all(check.passed for check in check_effects(children))
    # Some children that had succeeded were undone as a whole with their parent.
    undone = children.filter(status="compensated", parent__status="compensated",
                             events__kind="saga_succeeded").distinct()
    assert undone.exists(), run.stdout[-5000:]
