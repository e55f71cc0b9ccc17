"""saga_chaos end to end: killed pool children and workers, a restarted broker, no saga lost."""
import os
import shutil
import subprocess
import sys

import pytest
from django.conf import settings

from sagas.bench import CHAOS_SAGA
from sagas.invariants import check_sagas
from sagas.models import FINAL_SAGA_STATUSES, SagaInstance
from sagas.workers import database_url

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="saga_chaos runs a redis-server of its own"),
]


def test_chaos_run_loses_no_saga_and_leaves_every_saga_consistent(transactional_db):
    # A process of its own: the command points its Celery app at a private Redis.
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "config.settings_test"}
    run = subprocess.run(
        [sys.executable, "manage.py", "saga_chaos", "--sagas", "16", "--workers", "2", "--concurrency", "1",
         "--kill-every", "1.5", "--broker-restarts", "1", "--step-seconds", "0.2", "--stall-after", "3",
         "--timeout", "240", "--seed", "7"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=400,
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sagas = SagaInstance.objects.filter(saga_type=CHAOS_SAGA)
    assert sagas.count() == 16
    assert sagas.filter(status__in=FINAL_SAGA_STATUSES).count() == 16
    assert all(check.passed for check in check_sagas(sagas))
    assert "'broker restart': 1" in run.stdout
    assert "no saga lost, every saga consistent" in run.stdout
