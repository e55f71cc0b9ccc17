"""How long one /metrics scrape takes as sagas accumulate.

    DEBUG=1 DATABASE_URL=sqlite:///$PWD/var/metrics-cost.sqlite3 \
        .venv/bin/python scripts/metrics_cost.py --sagas 100000 --active 1000

Fills the database it is pointed at (migrated first) with sagas of three step
records each, spread over a few types, until it holds ``--sagas``: ``--active``
of them running, the others finished (succeeded or compensated). Then it folds
the finished ones into the totals in one pass (timed: what migration 0010 does
once for the sagas that finished before it) and times the exposition (the work
of one scrape) ``--runs`` times, the figures cache bypassed. Use a database of
its own: it writes rows.
"""
import argparse
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from sagas import metrics  # noqa: E402
from sagas.metrics import totals  # noqa: E402
from sagas.models import SagaInstance, SagaStatus, StepRecord, StepStatus  # noqa: E402

TYPES = [f"metrics.cost.t{n}" for n in range(6)]
FINISHED = [(SagaStatus.SUCCEEDED, [StepStatus.SUCCEEDED] * 3),
            (SagaStatus.COMPENSATED, [StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED])]
RUNNING = (SagaStatus.RUNNING, [StepStatus.SUCCEEDED, StepStatus.RUNNING, StepStatus.PENDING])


def fill(total: int, active: int, batch: int = 5000) -> None:
    rng = random.Random(1)
    now = timezone.now()
    while (have := SagaInstance.objects.count()) < total:
        size = min(batch, total - have)
        sagas, steps = [], []
        for n in range(have, have + size):
            status, step_statuses = RUNNING if n < active else FINISHED[rng.randrange(len(FINISHED))]
            saga = SagaInstance(saga_type=rng.choice(TYPES), status=status, input={},
                                finished_at=None if status == SagaStatus.RUNNING else now)
            sagas.append(saga)
            for index, step_status in enumerate(step_statuses):
                started = now - timedelta(seconds=rng.uniform(1, 10_000))
                done = step_status != StepStatus.PENDING and step_status != StepStatus.RUNNING
                steps.append(StepRecord(saga=saga, index=index, name=f"s{index}", status=step_status, attempts=1,
                                        started_at=started,
                                        finished_at=started + timedelta(seconds=rng.expovariate(1.0)) if done else None))
        SagaInstance.objects.bulk_create(sagas)
        StepRecord.objects.bulk_create(steps)
        print(f"  {have + size} sagas", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--active", type=int, default=1000, help="how many of them are running")
    parser.add_argument("--runs", type=int, default=5)
    o = parser.parse_args()
    call_command("migrate", verbosity=0)
    fill(o.sagas, o.active)
    began = time.perf_counter()
    with transaction.atomic():  # as migration 0010 does for the sagas that finished before it
        folded = totals.fold_everything()
    print(f"folded {folded} finished sagas in {time.perf_counter() - began:.3f} s", file=sys.stderr)
    fresh = metrics.compute_exposition  # the work, without any cache
    seconds = []
    for _ in range(o.runs):
        began = time.perf_counter()
        body = fresh()
        seconds.append(time.perf_counter() - began)
    print(f"{SagaInstance.objects.count()} sagas ({SagaInstance.objects.filter(metrics_folded=False).count()} "
          f"not folded), {StepRecord.objects.count()} step records: one scrape "
          f"{min(seconds):.3f} s best, {sorted(seconds)[len(seconds) // 2]:.3f} s median of {o.runs} "
          f"({len(body)} bytes)")


if __name__ == "__main__":
    main()
