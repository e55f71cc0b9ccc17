"""saga_bench end to end, tiny: it runs on the test database and prints its figures; no time or ratio is asserted.

The command runs in a process of its own (as people run it), at the
deployment's settings, with its own workers (or, with --api, gunicorn and
locust) on a queue of its own.
"""
import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from sagas.models import SagaInstance
from sagas.workers import database_url

pytestmark = pytest.mark.integration

SIDE_KEYS = {"n", "wall_s", "throughput_per_s", "latency_n", "p50_ms", "p95_ms", "p99_ms", "statements_per_step"}


def saga_bench(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    # The deployment's settings, not the test suite's: only the database is the test one.
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "config.settings"}
    run = subprocess.run([sys.executable, "manage.py", "saga_bench", *args, "--json"], cwd=settings.BASE_DIR,
                         env=env, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return run, json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(180)
def test_a_small_run_reports_both_sides_statements_and_worker_memory(transactional_db):
    run, figures = saga_bench("--sagas", "5", "--steps", "2", "--latency-runs", "3", "--statement-sagas", "1")

    for key in ("throughput_ratio", "compensated_throughput_ratio", "p50_added_ms_per_step", "statements_per_step",
                "transactions_per_step"):
        assert isinstance(figures[key], float | int), key
    for side in ("bare", "saga", "compensated"):
        assert SIDE_KEYS <= figures[side].keys()
        assert figures[side]["n"] == 5 and figures[side]["latency_n"] == 3
    assert figures["saga_type"] == "sagas.bench.s2" and figures["steps"] == 2
    assert figures["saga"]["statements"]["per_step"] > 0
    assert figures["compensated"]["statements"]["by_kind"]["BEGIN"] > 0  # transaction control is counted
    rss = figures["worker_rss"]
    assert len(rss["start"]) == len(rss["end"]) == 3  # the worker and its two pool children
    for heading in ("Statements per step", "Throughput", "Latency", "Worker memory", "orchestrated / bare"):
        assert heading in run.stdout
    assert not SagaInstance.objects.exists()  # its rows are removed


@pytest.mark.timeout(180)
def test_a_parallel_run_reports_the_cost_per_member(transactional_db):
    _, figures = saga_bench("--sagas", "3", "--parallel", "3", "--latency-runs", "2", "--statement-sagas", "1")

    assert figures["saga_type"] == "sagas.bench.p3" and figures["parallel"] == 3
    assert figures["parallel_in_process"]["members"]["members"] == 3
    assert figures["parallel_in_process"]["reference"]["members"] == 10
    assert "member_cost_ratio" in figures and figures["throughput_ratio"] is not None
    assert not SagaInstance.objects.exists()


@pytest.mark.timeout(120)
def test_an_api_load_run_reports_requests_and_cleans_up(transactional_db):
    run, figures = saga_bench("--api", "--api-seconds", "3", "--api-users", "2", "--api-web-workers", "2")

    api = figures["api"]
    assert api["requests"] > 0 and api["failures"] == 0
    assert api["per_s"] > 0 and api["p50_ms"] is not None
    assert api["sagas_created"] == api["queue_dropped"]  # every accepted saga's message, dropped with its queue
    assert "throughput_ratio" in figures
    assert not SagaInstance.objects.exists() and not get_user_model().objects.exists()
