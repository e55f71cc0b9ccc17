"""saga_demo: run the corporate sagas through the real workers and report on them.

    python manage.py saga_demo --sagas 20 --failure-rate 0.2 --seed 1 [--examples] [--timeout 300]
        [--approval-rate 0.9] [--approval-delay 0.2] [--approval-jitter 0.1] [--short-deadlines]

``--failure-rate P`` makes each step attempt of every corporate saga (the
onboarding's child saga, IT's provisioning, included) fail with
probability P: half of it transient (retried by the step's policy), half
permanent (the saga compensates). The rules are stored in the database, where
the workers read them, and removed when the run ends. ``--examples`` first
runs one success and one refusal of each saga type (no failures injected)
and checks each ends as expected, an onboarding's child saga included (its
IT provisioning succeeded, or undone with it).

The sagas' gates (budget approvals, the release gate, the signed contract)
are answered while the demo runs by a simulated approver: a demo user holding
the gates' permissions (``complete_step`` / ``fail_step``) and the simulated
e-signature service (the contract's token callback). ``--approval-rate`` is
the share it approves (the rest it rejects), ``--approval-delay`` and
``--approval-jitter`` how long it takes.

Sagas that pause past their pivot (an order whose confirmation bounces, a
hire whose laptop model or floor has nothing free, a step after the pivot
failed by injection) are looked after by a simulated operator (the user
``demo-operator``), after the same delay: it fixes what the error names and
resumes (with corrected input where the input was the cause), or skips the
step with the result of doing it by hand. The report counts the pauses,
resumes and skips. ``--short-deadlines`` starts the
gated sagas in their rehearsal version (deadlines of seconds), leaves
``--unanswered`` of the waits unanswered so their deadlines pass, and runs
the sweeper (``sagas.sweep``) every second so those time out and compensate
during the run.

Exit status 1 when a business invariant fails, an example ends otherwise
than expected (or without the operator's move it shows), or a saga is still
unfinished (or paused) at ``--timeout``.
"""
from __future__ import annotations

import random
import time

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from config.celery import app
from corporate import demo
from corporate.invariants import check_all
from corporate.sagas import ALL_TYPES, REHEARSAL_VERSIONS, SAGA_TYPES
from corporate.workflows.common import REHEARSAL_DEADLINE
from sagas import analytics, engine, failure_injection
from sagas.models import FINAL_SAGA_STATUSES, SagaInstance, SagaStatus

NO_WORKER = (
    "no Celery worker answered on queue {queue!r}. Start one in another terminal:\n"
    "    celery -A config worker -E -l info\n"
    "(with the same DATABASE_URL and CELERY_BROKER_URL as this command)"
)
BAR_WIDTH = 30
SWEEP_EVERY = 1.0  # seconds, with --short-deadlines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


class Command(BaseCommand):
    help = "Run the corporate sagas through the workers, with optional failure injection, and print a report."

    def add_arguments(self, parser):
        parser.add_argument("--sagas", type=int, default=20, help="generated sagas to run, spread over the four types")
        parser.add_argument("--failure-rate", type=float, default=0.0,
                            help="probability (0..1) that a step attempt fails: half transient, half permanent")
        parser.add_argument("--seed", type=int, default=None,
                            help="seeds the generated inputs and the failure-injection decisions")
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the sagas to finish")
        parser.add_argument("--worker-wait", type=float, default=5.0,
                            help="seconds to wait for a worker to answer (one that is still starting)")
        parser.add_argument("--examples", action="store_true",
                            help="first run one success and one refusal of each saga type and check their outcome")
        parser.add_argument("--approval-rate", type=float, default=0.9,
                            help="share of waits the simulated approver approves (0..1); it rejects the rest")
        parser.add_argument("--approval-delay", type=float, default=0.2,
                            help="seconds the simulated approver takes to answer a wait")
        parser.add_argument("--approval-jitter", type=float, default=0.1,
                            help="the delay varies by up to this many seconds either way")
        parser.add_argument("--short-deadlines", action="store_true",
                            help=f"start the gated sagas with deadlines of {REHEARSAL_DEADLINE:g}s (their rehearsal "
                                 f"version), leave some waits unanswered, and sweep every {SWEEP_EVERY:g}s")
        parser.add_argument("--unanswered", type=float, default=0.2,
                            help="with --short-deadlines: share of waits nobody answers (they time out)")

    def handle(self, *args, sagas: int, failure_rate: float, seed: int | None, timeout: float, examples: bool,
               worker_wait: float, approval_rate: float, approval_delay: float, approval_jitter: float,
               short_deadlines: bool, unanswered: float, **options):
        if sagas < 0:
            raise CommandError("--sagas must be 0 or more")
        if not 0.0 <= failure_rate <= 1.0:
            raise CommandError("--failure-rate must be between 0 and 1")
        if not 0.0 <= approval_rate <= 1.0 or not 0.0 <= unanswered <= 1.0:
            raise CommandError("--approval-rate and --unanswered must be between 0 and 1")
        if approval_delay < 0 or approval_jitter < 0:
            raise CommandError("--approval-delay and --approval-jitter must be 0 or more")
        if failure_rate > 0 and not failure_injection.is_enabled():
            raise CommandError("failure injection is switched off in these settings "
                               "(SAGAS_FAILURE_INJECTION_ENABLED, which follows DEBUG when unset)")
        self._check_worker(worker_wait)
        seed = random.randrange(1_000_000) if seed is None else seed
        rng = random.Random(seed)
        world = demo.ensure_reference_data()
        self.approver = demo.Approver(user=demo.approver_user(), rng=random.Random(seed), rate=approval_rate,
                                      delay=approval_delay, jitter=approval_jitter,
                                      silence=unanswered if short_deadlines else 0.0)
        self.operator = demo.Operator(user=demo.operator_user(), rng=random.Random(seed + 1), delay=approval_delay,
                                      jitter=approval_jitter)
        self.sweeping = short_deadlines
        window_start = timezone.now()
        began = time.monotonic()
        deadline = began + timeout
        self.stdout.write(
            f"saga_demo: {sagas} sagas over {len(SAGA_TYPES)} types{' plus the examples' if examples else ''}, "
            f"failure rate {failure_rate:g} per step attempt ({failure_rate / 2:g} transient + "
            f"{failure_rate / 2:g} permanent), seed {seed}"
        )
        self.stdout.write(
            f"  gates answered by {demo.DEMO_APPROVER}: approves {approval_rate:.0%}, after {approval_delay:g}s "
            f"± {approval_jitter:g}s" + (f"; short deadlines ({REHEARSAL_DEADLINE:g}s), {unanswered:.0%} of waits "
                                         f"left unanswered, swept every {SWEEP_EVERY:g}s" if short_deadlines else "")
        )

        shown: list[demo.Started] = []
        if examples:
            plans = demo.plan_examples(world)
            if short_deadlines:
                plans.append(demo.plan_timeout_example(world))
            demo.ensure_capacity(world, plans)
            shown = demo.start(plans)
            self._wait(shown, deadline, "examples")
        generated: list[demo.Started] = []
        if sagas:
            plans = demo.plan_random(world, sagas, rng, seed)
            if short_deadlines:
                for plan in plans:
                    plan.version = REHEARSAL_VERSIONS.get(plan.saga_type)
            demo.ensure_capacity(world, plans)
            replaced = None
            try:
                if failure_rate > 0:
                    replaced = demo.failure_rules_install(rate=failure_rate, seed=seed)
                    time.sleep(failure_injection.cache_seconds() + 0.2)  # let the workers' caches expire
                generated = demo.start(plans)
                self._wait(generated, deadline, "sagas")
            finally:
                if replaced is not None:
                    demo.failure_rules_remove(replaced)
        elapsed = time.monotonic() - began

        unfinished = self._report_figures(window_start, shown + generated, elapsed)
        self._report_gates(shown + generated)
        self._report_operator(shown + generated)
        wrong = self._report_examples(shown)
        invariants = self._report_invariants()
        failed = [name for name, passed, _ in invariants if not passed]
        if failed or unfinished or wrong:
            raise CommandError(
                f"{len(failed)} invariant(s) failed, {len(wrong)} example(s) ended otherwise than expected, "
                f"{len(unfinished)} saga(s) unfinished"
            )
        self.stdout.write(self.style.SUCCESS("saga_demo: every saga finished and every invariant holds"))

    # --- workers and waiting -------------------------------------------------------------

    def _check_worker(self, wait: float) -> None:
        """Return once a worker consumes our queue; a worker that is still booting gets ``wait`` seconds."""
        queue = app.conf.task_default_queue
        deadline = time.monotonic() + wait
        while True:
            try:
                replies = app.control.inspect(timeout=1.0).active_queues() or {}
            except (OperationalError, OSError) as exc:
                raise CommandError(f"the broker does not answer ({exc}); is Redis running?") from None
            if any(q.get("name") == queue for queues in replies.values() for q in queues or []):
                return
            if time.monotonic() >= deadline:
                raise CommandError(NO_WORKER.format(queue=queue))

    def _wait(self, started: list[demo.Started], deadline: float, what: str) -> None:
        """Poll until ``started`` finish, answering their gates and (short deadlines) sweeping meanwhile."""
        ids = [s.saga.pk for s in started]
        self.approver.watch(started)
        self.operator.watch(started)
        last_sweep = time.monotonic()
        tty = self.stdout.isatty()
        began = time.monotonic()
        last_line = ""
        last_print = 0.0
        while True:
            statuses = list(SagaInstance.objects.filter(pk__in=ids).values_list("status", flat=True))
            done = sum(1 for s in statuses if s in FINAL_SAGA_STATUSES)
            ok = statuses.count(SagaStatus.SUCCEEDED)
            undone = statuses.count(SagaStatus.COMPENSATED)
            broken = statuses.count(SagaStatus.FAILED)
            paused = statuses.count(SagaStatus.PAUSED)
            filled = BAR_WIDTH * done // max(len(ids), 1)
            line = (f"  {what:<8} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{len(ids)} finished "
                    f"({ok} succeeded, {undone} compensated, {broken} failed; {paused} paused) "
                    f"{time.monotonic() - began:.1f}s")
            finished = done == len(ids) or time.monotonic() > deadline
            if tty:
                self.stdout.write("\r" + line, ending="")
                self.stdout.flush()
            elif finished or (line.split(" finished")[0] != last_line and time.monotonic() - last_print > 2):
                self.stdout.write(line)
                last_line, last_print = line.split(" finished")[0], time.monotonic()
            if finished:
                if tty:
                    self.stdout.write("")
                return
            self.approver.tick()
            self.operator.tick()
            if self.sweeping and time.monotonic() - last_sweep >= SWEEP_EVERY:
                engine.sweep()  # times out the waits whose deadline passed (beat may run it too: harmless)
                last_sweep = time.monotonic()
            time.sleep(0.1)

    # --- the report ----------------------------------------------------------------------

    def _report_figures(self, since, started: list[demo.Started], elapsed: float) -> list:
        # The child sagas (IT's provisioning, started by the onboardings) are counted as a type of their own.
        per_type = analytics.saga_type_stats(since=since, saga_type=ALL_TYPES)
        overall = analytics.overall_stats(since=since, saga_type=ALL_TYPES)
        w = self.stdout.write
        w("")
        children = SagaInstance.objects.filter(parent_id__in=[s.saga.pk for s in started]).count()
        w(f"Sagas started by this run: {len(started)} in {elapsed:.1f}s, and {children} child sagas they started")
        header = (f"  {'saga type':<30}{'total':>6}{'succeeded':>10}{'compensated':>12}{'failed':>7}{'active':>7}"
                  f"{'success':>9}{'compens.':>9}{'p50':>8}{'p95':>8}")
        w(header)
        for s in [*per_type, overall]:
            label = "all types" if s.saga_type == analytics.ALL_TYPES else s.saga_type
            w(f"  {label:<30}{s.total:>6}{s.counts[SagaStatus.SUCCEEDED]:>10}{s.counts[SagaStatus.COMPENSATED]:>12}"
              f"{s.counts[SagaStatus.FAILED]:>7}{s.active:>7}{_pct(s.success_rate):>9}"
              f"{_pct(s.compensation_rate):>9}{_secs(s.p50_seconds):>8}{_secs(s.p95_seconds):>8}")

        w("")
        w("Steps: actions that succeeded, failed for good, were compensated; attempts retried")
        w(f"  {'saga type / step':<44}{'ok':>5}{'failed':>8}{'undone':>8}{'retried':>9}{'p50':>8}{'p95':>8}")
        current = None
        for st in analytics.step_stats(since=since, saga_type=ALL_TYPES):
            if st.saga_type != current:
                current = st.saga_type
                w(f"  {current}")
            w(f"    {st.index + 1}. {st.step:<37}{st.succeeded:>5}{st.failed:>8}{st.compensated:>8}"
              f"{st.retried_attempts:>9}{_secs(st.p50_seconds):>8}{_secs(st.p95_seconds):>8}")

        errors = [(s.saga_type, e) for s in per_type for e in s.top_errors]
        if errors:
            w("")
            w("Most frequent errors")
            for saga_type, e in sorted(errors, key=lambda p: -p[1].count)[:8]:
                w(f"  {e.count:>3}x  {saga_type.split('.')[-1]}: {e.error[:110]}")

        ids = [s.saga.pk for s in started]
        unfinished = list(SagaInstance.objects.filter(Q(pk__in=ids) | Q(parent_id__in=ids)).exclude(
            status__in=FINAL_SAGA_STATUSES).values_list("pk", "saga_type", "status"))
        if unfinished:
            w("")
            w(self.style.ERROR(f"Unfinished: {len(unfinished)} saga(s)"))
            for pk, saga_type, status in unfinished[:10]:
                w(f"  {pk} {saga_type} still {status}")
        return unfinished

    def _report_gates(self, started: list[demo.Started]) -> None:
        gates = demo.gate_figures([s.saga.pk for s in started])
        if not gates:
            return
        w = self.stdout.write
        w("")
        w(f"Gates: how long each wait lasted and how it ended (answered by {demo.DEMO_APPROVER} and the "
          f"e-signature service)")
        w(f"  {'saga type / gate':<44}{'waits':>6}{'approved':>9}{'rejected':>9}{'timed out':>10}{'skipped':>8}"
          f"{'p50':>8}{'p95':>8}")
        for g in gates:
            waits = len(g.waits) + g.open
            extra = "".join(f"  ({n} {label})" for n, label in ((g.cancelled, "cancelled"), (g.open, "still open"))
                            if n)
            w(f"  {g.saga_type.split('.')[-1] + ' / ' + g.step:<44}{waits:>6}{g.approved:>9}{g.rejected:>9}"
              f"{g.timed_out:>10}{g.skipped:>8}{_secs(g.p50):>8}{_secs(g.p95):>8}{extra}")

    def _report_operator(self, started: list[demo.Started]) -> None:
        rows = demo.operator_figures([s.saga.pk for s in started])
        if not rows:
            return
        w = self.stdout.write
        w("")
        w(f"Operator: sagas paused past their pivot, and what {demo.DEMO_OPERATOR} did")
        w(f"  {'saga type':<30}{'paused':>7}{'resumed':>8}{'corrected input':>16}{'skipped':>8}")
        total = demo.OperatorFigures("all types")
        for row in rows:
            w(f"  {row.saga_type:<30}{row.paused:>7}{row.resumed:>8}{row.corrected:>16}{row.skipped:>8}")
            for name in ("paused", "resumed", "corrected", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
        w(f"  {total.saga_type:<30}{total.paused:>7}{total.resumed:>8}{total.corrected:>16}{total.skipped:>8}")
        moves = ", ".join(f"{n}x {move}" for move, n in self.operator.moves.most_common())
        w(f"  moves: {moves or 'none'}")

    def _report_examples(self, shown: list[demo.Started]) -> list:
        if not shown:
            return []
        w = self.stdout.write
        w("")
        w("Examples")
        wrong = []
        for item in shown:
            item.saga.refresh_from_db()
            moves = self.operator.applied.get(item.saga.pk, [])
            remedied = item.plan.remedy is None or item.plan.remedy in moves
            children = list(SagaInstance.objects.filter(parent_id=item.saga.pk).values_list("saga_type", "status"))
            child_ok = item.plan.child is None or [status for _, status in children] == [item.plan.child]
            passed = item.saga.status == item.plan.expected and remedied and child_ok
            if not passed:
                wrong.append(item)
            mark = self.style.SUCCESS("PASS") if passed else self.style.ERROR("FAIL")
            note = "" if passed else f" (expected {item.plan.expected}" + (
                "" if remedied else f" after: {item.plan.remedy}") + (
                "" if child_ok else f", its child saga {item.plan.child}") + ")"
            after = f" after a pause: {'; '.join(moves)}" if moves else ""
            tree = "".join(f"; child {saga_type} {status}" for saga_type, status in children)
            w(f"  {mark}  {item.plan.label:<44} {item.saga.status}{tree}{after}{note}")
        return wrong

    def _report_invariants(self) -> list:
        w = self.stdout.write
        w("")
        w("Business invariants")
        results = [*check_all(), self.operator.held_invariant()]
        for name, passed, detail in results:
            mark = self.style.SUCCESS("PASS") if passed else self.style.ERROR("FAIL")
            w(f"  {mark}  {name:<66} {detail}")
        return results
