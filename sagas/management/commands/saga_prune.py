"""Remove finished sagas older than a number of days, with their step records and events."""
import math
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from sagas.models import SagaStatus
from sagas.retention import DEFAULT_BATCH_SIZE, PRUNED_STATUSES, PruneReport, prune_finished_sagas


def positive_number(text: str, *, name: str, integer: bool = False, minimum: float = 0) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise CommandError(f"{name} must be a {'whole ' if integer else ''}number, not {text!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise CommandError(f"{name} must be {minimum:g} or more, not {text!r}")
    return value


class Command(BaseCommand):
    help = (f"Remove sagas that finished ({', '.join(PRUNED_STATUSES)}; {SagaStatus.FAILED} only with "
            "--include-failed) more than DAYS ago, with their step records and events. "
            "Active sagas are never removed.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, metavar="DAYS",
                            help="remove sagas whose finished_at is more than DAYS days ago (fractions allowed)")
        parser.add_argument("--include-failed", action="store_true",
                            help=f"also remove {SagaStatus.FAILED} sagas (a person was meant to act on them)")
        parser.add_argument("--dry-run", action="store_true", help="count what would go; remove nothing")
        parser.add_argument("--batch-size", default=str(DEFAULT_BATCH_SIZE), metavar="N",
                            help=f"sagas removed per transaction (default {DEFAULT_BATCH_SIZE})")

    def handle(self, *args, older_than: str, include_failed: bool, dry_run: bool, batch_size: str, **options):
        days = positive_number(older_than, name="--older-than")
        size = int(positive_number(batch_size, name="--batch-size", integer=True, minimum=1))
        report = prune_finished_sagas(older_than=timedelta(days=days), include_failed=include_failed,
                                      dry_run=dry_run, batch_size=size)
        self.stdout.write(describe(report))


def describe(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    by_status = ", ".join(f"{n} {status}" for status, n in report.sagas.items())
    line = (f"saga_prune: {verb} {report.total_sagas} sagas finished before {report.finished_before:%Y-%m-%d %H:%M:%S %Z}"
            f" ({by_status}), {report.steps} step records, {report.events} events")
    if report.dry_run:
        return f"{line} (dry run: nothing removed)"
    return f"{line} in {report.batches} batch{'es' if report.batches != 1 else ''}"
