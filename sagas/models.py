"""Saga instances, their step records and the audit trail.

Rows hold data and constraints only; every change of status goes through
``sagas.engine``.
"""
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class SagaStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    COMPENSATING = "compensating", "compensating"
    COMPENSATED = "compensated", "compensated"
    FAILED = "failed", "failed (needs a person)"
    # A person paused it, or a step after its pivot failed for good: nothing moves it until ``resume``.
    PAUSED = "paused", "paused"


class StepStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    # The action succeeded; the step waits for a signal (``complete_step`` / ``fail_step``).
    WAITING = "waiting", "waiting for a signal"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    COMPENSATING = "compensating", "compensating"
    COMPENSATED = "compensated", "compensated"
    COMPENSATION_FAILED = "compensation_failed", "compensation failed"
    SKIPPED = "skipped", "skipped"


class EventKind(models.TextChoices):
    SAGA_CREATED = "saga_created"
    SAGA_STARTED = "saga_started"
    SAGA_SUCCEEDED = "saga_succeeded"
    SAGA_COMPENSATING = "saga_compensating"
    SAGA_COMPENSATED = "saga_compensated"
    SAGA_FAILED = "saga_failed"
    CANCEL_REQUESTED = "cancel_requested"
    RESUBMITTED = "resubmitted"
    COMPENSATION_RETRY_REQUESTED = "compensation_retry_requested"
    SAGA_RESUMED = "saga_resumed"
    SAGA_PAUSED = "saga_paused"
    STEP_STARTED = "step_started"
    STEP_ATTEMPT_FAILED = "step_attempt_failed"
    STEP_ATTEMPT_LOST = "step_attempt_lost"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_WAITING = "step_waiting"
    STEP_SIGNALLED = "step_signalled"
    STEP_FAILED = "step_failed"
    STEP_SKIPPED = "step_skipped"
    # A step after the pivot that failed for good, run again with a fresh retry budget (``resume``).
    STEP_RETRIED = "step_retried"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_ATTEMPT_FAILED = "compensation_attempt_failed"
    STEP_COMPENSATED = "step_compensated"
    COMPENSATION_FAILED = "compensation_failed"
    NOTHING_TO_COMPENSATE = "nothing_to_compensate"
    SAGA_STUCK = "saga_stuck"
    ERROR_CALLBACK_IGNORED = "error_callback_ignored"
    REPORT_DROPPED = "report_dropped"
    IDEMPOTENCY_KEY_EXPIRED = "idempotency_key_expired"
    # A success reported late by an attempt judged dead, after its step was undone: undone again.
    LATE_SUCCESS_COMPENSATED = "late_success_compensated"
    LATE_COMPENSATION_FAILED = "late_compensation_failed"


# Not finished. (A paused saga is active too, though nothing moves it until it is resumed.)
ACTIVE_SAGA_STATUSES = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PAUSED)
# A step whose action succeeded, whatever happened to it afterwards.
FORWARD_DONE_STATUSES = (StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED,
                         StepStatus.COMPENSATION_FAILED)
# A step the forward run has gone past: it succeeded, or it was skipped (by a person, after the pivot).
FORWARD_PASSED_STATUSES = (StepStatus.SUCCEEDED, StepStatus.SKIPPED)


def results_of(records) -> dict:
    """Step name -> output of every step whose action succeeded (or a person gave when skipping it), from its records."""
    return {r.name: r.result for r in records
            if (r.status in FORWARD_DONE_STATUSES and not r.may_have_effects)
            or (r.status == StepStatus.SKIPPED and r.result is not None)}
FINAL_SAGA_STATUSES = (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


class SagaInstance(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    saga_type = models.CharField(max_length=200, db_index=True)
    version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, choices=SagaStatus.choices, default=SagaStatus.PENDING, db_index=True)
    input = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # Whose key it is: "" for code (``start_saga(idempotency_key=...)``), "user:<id>" for a key a user
    # sent to the API (``Idempotency-Key``): one user's key never answers another's saga.
    idempotency_scope = models.CharField(max_length=60, default="", blank=True)
    # The user who started it (API, admin, command line); null for sagas started by code.
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    resubmitted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="resubmissions"
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    # When the sweeper should look at this saga if nothing happens before
    # (database clock). Null once it is finished, or held for a person
    # because the sweeper could not move it.
    due_at = models.DateTimeField(null=True, blank=True)
    # Times the sweeper re-sent work without the saga moving since: each
    # resend waits twice as long as the one before.
    sweeps = models.PositiveSmallIntegerField(default=0)
    # A paused saga: the status it was paused from (what ``resume`` goes back to), and why it paused
    # (``person``, or ``after_pivot``: a step after its pivot failed for good). Empty otherwise.
    paused_from = models.CharField(max_length=20, blank=True, default="")
    pause_cause = models.CharField(max_length=20, blank=True, default="")
    # Its figures are in ``MetricTotal`` (``sagas.metrics.totals``): a finished saga is summed there
    # once, and ``/metrics`` reads only the sagas not folded yet. Cleared if it leaves its final status.
    metrics_folded = models.BooleanField(default=False, db_default=False, editable=False)
    # A child saga (``ChildSaga``): the saga that started it, and the step of that saga whose work it is
    # (the step waits for it). Null for a root saga. ``depth``: 0 for a root, its parent's + 1 for a child.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    parent_step = models.ForeignKey("StepRecord", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="child_sagas")
    depth = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        # Who may do what (``sagas.access``): ``view_sagainstance`` is Django's own.
        permissions = [
            ("start_saga", "Can start sagas"),
            ("cancel_saga", "Can cancel sagas"),
            ("pause_saga", "Can pause, resume and skip steps of sagas"),
            ("resubmit_saga", "Can resubmit sagas"),
            ("retry_compensation", "Can retry compensation and release held sagas"),
            ("run_bulk_actions", "Can run bulk actions over sagas"),
            ("view_sensitive_data", "Can see sensitive saga fields unmasked"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["saga_type", "idempotency_scope", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="saga_unique_idempotency_key_per_scope",
            ),
            models.CheckConstraint(
                condition=Q(status__in=SagaStatus.values), name="saga_status_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="saga_status_updated_idx"),
            # The sweeper's query: only sagas that are due, however many are active.
            models.Index(fields=["due_at"], condition=Q(due_at__isnull=False), name="saga_due_idx"),
            # What /metrics reads at each scrape: the sagas whose figures are not in MetricTotal yet.
            models.Index(fields=["saga_type", "status"], condition=Q(metrics_folded=False),
                         name="saga_metrics_unfolded_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINAL_SAGA_STATUSES

    @property
    def step_records(self):
        """Its step records by index: those ``start_saga`` just wrote (no read back), else from the database."""
        written = self.__dict__.get("written_steps")
        return written if written is not None else self.steps.all()

    @property
    def current_results(self) -> dict:
        """``results`` as of now: written when the saga finishes, read from its step records before."""
        return self.results if self.is_finished else results_of(self.step_records)

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class StepRecord(models.Model):
    saga = models.ForeignKey(SagaInstance, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    # What runs one after another: steps of one stage (the members of a
    # Parallel) run at once. Null on rows written before stages existed,
    # where every step was its own stage.
    stage = models.PositiveIntegerField(null=True, blank=True)
    # The Parallel this step is a member of; null for a plain step.
    parallel_group = models.CharField(max_length=200, null=True, blank=True)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING)
    has_compensation = models.BooleanField(default=True)
    attempts = models.PositiveIntegerField(default=0)
    # Attempts made before a person resumed the step with a fresh retry budget (after its pivot):
    # its retry policy counts only ``attempts - retry_base``; attempt numbers keep growing.
    retry_base = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    compensation_attempts = models.PositiveIntegerField(default=0)
    compensation_error = models.TextField(blank=True, default="")
    compensated_at = models.DateTimeField(null=True, blank=True)
    # While an attempt holds the step: after this moment another delivery may
    # assume the attempt's worker died and take over.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When a failed attempt's retry is due (the retry message waits until then).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The worker process running the current attempt (``sagas.liveness``):
    # once it stops heartbeating the attempt is lost, lease or not.
    held_by = models.CharField(max_length=200, null=True, blank=True)
    # When the attempt now holding the step began (the database's clock). Its
    # ``step_started`` event is written, with this time, by the transition
    # that ends the attempt (its report, or its loss), which clears it: so a
    # claim is one UPDATE, with no event to insert.
    attempt_started_at = models.DateTimeField(null=True, blank=True)
    # A failed step whose action may have applied effects (it returned but its
    # outcome could not be stored, or its attempt was lost or killed): it is
    # compensated with the others, its compensation seeing ``ctx.result = None``.
    may_have_effects = models.BooleanField(default=False)
    # A waiting step (``sagas.engine.waiting``): since when it waits, until when
    # (the database's clock; null: no deadline), and the sha256 of its wait's
    # token (``ctx.signal_token``), set while an attempt or the wait may use it.
    waiting_since = models.DateTimeField(null=True, blank=True)
    signal_deadline = models.DateTimeField(null=True, blank=True)
    signal_token_hash = models.CharField(max_length=64, null=True, blank=True, editable=False)
    # A token callback that arrived while the action was still running (the other system answered
    # fast): ``{"signal": "complete" | "fail", "result" | "error": ..., "by": ...}``, taken up when the
    # action's success is recorded; it dies with its attempt.
    early_signal = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["index"]
        constraints = [
            models.UniqueConstraint(fields=["saga", "index"], name="step_unique_index_per_saga"),
            models.UniqueConstraint(fields=["saga", "name"], name="step_unique_name_per_saga"),
            models.CheckConstraint(condition=Q(status__in=StepStatus.values), name="step_status_valid"),
        ]
        indexes = [
            # The sweeper's look-up of attempts held by workers that stopped heartbeating.
            models.Index(fields=["held_by"], condition=Q(held_by__isnull=False), name="step_held_by_idx"),
            # The sweeper's look-up of waits past their deadline: only waiting steps are in it.
            models.Index(fields=["signal_deadline"], condition=Q(status=StepStatus.WAITING, signal_deadline__isnull=False),
                         name="step_signal_deadline_idx"),
            # The waiting-steps list, oldest first.
            models.Index(fields=["waiting_since"], condition=Q(status=StepStatus.WAITING), name="step_waiting_since_idx"),
            # A token callback finds its step by the token's hash.
            models.Index(fields=["signal_token_hash"], condition=Q(signal_token_hash__isnull=False),
                         name="step_signal_token_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.index} {self.name} ({self.status})"


class SagaEvent(models.Model):
    saga = models.ForeignKey(SagaInstance, on_delete=models.CASCADE, related_name="events")
    step = models.ForeignKey(StepRecord, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40, choices=EventKind.choices)
    detail = models.JSONField(default=dict, blank=True)
    # The database's clock when the transition happened (a step_started event
    # is written later than its time: see StepRecord.attempt_started_at).
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]  # the trail in the order things happened

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S.%f} {self.kind}"


class WorkerBeat(models.Model):
    """The last sign of life of one worker process that runs steps (``sagas.liveness``)."""

    id = models.CharField(primary_key=True, max_length=200)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.id} (last beat {self.beat_at:%H:%M:%S})"


class SweeperLease(models.Model):
    """Who is sweeping, until when (the database's clock): at most one sweep runs at a time."""

    id = models.CharField(primary_key=True, max_length=20)
    holder = models.CharField(max_length=200)
    until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.id} held by {self.holder} until {self.until:%H:%M:%S}"


class ChaosEffect(models.Model):
    """The effect one step of a ``saga_chaos`` saga applied, keyed by the step's idempotency key.

    A chaos run reads these rows, not the engine's, to judge its sagas: an
    effect applied twice, missing after success, or left in place after
    compensation is visible here whatever the step records say.
    """

    key = models.CharField(max_length=255, unique=True)
    saga_id = models.UUIDField(db_index=True)
    step = models.CharField(max_length=200)
    transactional = models.BooleanField(default=False)
    # Times the effect was applied: an idempotent action applies it only when
    # it is absent; a transactional action adds one each time it commits.
    applied = models.PositiveIntegerField(default=0)
    # Times an action reached the effect (more than one: a redelivered attempt).
    runs = models.PositiveIntegerField(default=0)
    undone_at = models.DateTimeField(null=True, blank=True)
    undo_runs = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.key} applied {self.applied}x{' (undone)' if self.undone_at else ''}"


class MetricTotal(models.Model):
    """One figure of ``/metrics`` summed over the finished sagas folded so far (``sagas.metrics.totals``).

    ``step`` is empty for a saga's own figures (``figure``: its status), else
    a step's name (``figure``: attempts, a histogram bucket...). A scrape adds
    the same figures of the sagas not folded yet, so it never reads the rows
    of a finished saga again.
    """

    saga_type = models.CharField(max_length=200)
    step = models.CharField(max_length=200, blank=True, default="")
    figure = models.CharField(max_length=40)
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["saga_type", "step", "figure"], name="metric_total_unique")]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.step} {self.figure} = {self.value:g}"


class BulkActionKind(models.TextChoices):
    """What a bulk action does to each saga: the engine function of the same name (``sagas.bulk``)."""

    CANCEL = "cancel", "cancel"
    PAUSE = "pause", "pause"
    RESUME = "resume", "resume"
    RETRY_COMPENSATION = "retry_compensation", "retry compensation"
    RESUBMIT = "resubmit", "resubmit"


class BulkActionStatus(models.TextChoices):
    RUNNING = "running", "running"
    DONE = "done", "done"


class BulkAction(models.Model):
    """One action over every saga matching a filter, done in the background in batches (``sagas.bulk``).

    The cursor is the (``created_at``, ``id``) of the last saga a committed
    batch handled: a batch's engine calls and its progress commit together,
    so a job whose worker died goes on from the cursor and acts on each saga
    once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    action = models.CharField(max_length=30, choices=BulkActionKind.choices)
    # As the client gave it (validated): {"status": [...], "saga_type": ..., "created_after": ...,
    # "created_before": ..., "ids": [...]}, applied again at every batch.
    filter = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    status = models.CharField(max_length=20, choices=BulkActionStatus.choices, default=BulkActionStatus.RUNNING)
    # Sagas matching when the job was asked for (a COUNT); once done, the sagas it acted on or refused.
    matched = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    # [{"saga_id": "...", "reason": "..."}]: sagas the engine (or the user's permissions) refused.
    refused = models.JSONField(default=list, blank=True)
    # Why the job stopped before its end (its user was removed or lost the permission), or "".
    error = models.TextField(blank=True, default="")
    cursor_created_at = models.DateTimeField(null=True, blank=True)
    cursor_saga_id = models.UUIDField(null=True, blank=True)
    batches = models.PositiveIntegerField(default=0)
    # Only sagas created up to this moment match: sagas started meanwhile (a resubmit's) are not chased.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # When a batch last committed (or the periodic check last sent the job again): a running job
    # whose progress is older than SAGAS_BULK_STALE_AFTER has lost its message or its worker.
    progress_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(action__in=BulkActionKind.values), name="bulk_action_valid"),
            models.CheckConstraint(condition=Q(status__in=BulkActionStatus.values), name="bulk_status_valid"),
        ]
        indexes = [
            # The periodic check's look-up: only running jobs are in it.
            models.Index(fields=["progress_at"], condition=Q(status=BulkActionStatus.RUNNING),
                         name="bulk_running_progress_idx"),
        ]

    def __str__(self) -> str:
        return f"bulk {self.action} {self.id} ({self.status})"
