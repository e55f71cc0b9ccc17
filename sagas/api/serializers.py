"""What goes in and out of the API. Shapes only: the engine decides everything else.

Input serializers check the shape of a request; the saga's own rules (is the
type registered, does the input match its schema, is the move allowed) are
the engine's, and its typed errors become responses in ``exceptions``.
"""
import copy

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..definitions import registry
from ..models import SagaEvent, SagaInstance, StepRecord
from .exceptions import IDEMPOTENCY_HEADER

IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY_LENGTH_ERROR = "must be 1 to 255 characters"
# DRF and Django refuse NUL in every text field (no database column stores
# it); the schema says so with this pattern.
NO_NUL_PATTERN = r"^[^\x00]*$"
# A query parameter sent with nothing in it (``?until=``) is refused, not read
# as left out: the schema calls an empty value invalid.
BLANK_PARAMETER_ERROR = "may not be blank; leave it out instead"


# What the engine stores is free of NUL characters (no database column keeps them): the schema
# says so of an object's keys; text values holding one are refused too (400), at any depth.
JSON_OBJECT_SCHEMA = {"type": "object", "additionalProperties": {}, "propertyNames": {"pattern": NO_NUL_PATTERN},
                      "description": "A JSON object; no NUL character in its keys or text (400)."}


@extend_schema_field(JSON_OBJECT_SCHEMA)
class JSONObjectField(serializers.JSONField):
    """Any JSON value on the wire, documented as an object: the engine rejects the rest with a field error."""


class TextField(serializers.CharField):
    """A ``CharField`` whose schema says what it refuses: NUL characters."""


class TextFieldSchema(OpenApiSerializerFieldExtension):
    target_class = TextField

    def map_serializer_field(self, auto_schema, direction) -> dict:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        return {**schema, "pattern": NO_NUL_PATTERN}


class SagaTypeField(serializers.CharField):
    """A saga name. Any string passes here: the engine refuses unregistered ones (``UnknownSagaType``)."""


class SagaTypeFieldSchema(OpenApiSerializerFieldExtension):
    """Documents ``SagaTypeField`` as the names registered when the schema is generated."""

    target_class = SagaTypeField

    def map_serializer_field(self, auto_schema, direction) -> dict:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        return {**schema, "enum": sorted({saga.name for saga in registry})}


# --- input ------------------------------------------------------------------------


class SagaStartInputSerializer(serializers.Serializer):
    saga_type = SagaTypeField(min_length=1, max_length=200,
                              help_text="A registered saga name (see /api/saga-types/).")
    version = serializers.IntegerField(
        min_value=1, required=False, help_text="A registered version; the latest one when left out."
    )
    input = JSONObjectField(required=False, default=dict, help_text="The saga's input, a JSON object.")


class SagaCancelInputSerializer(serializers.Serializer):
    reason = TextField(
        max_length=1000, required=False, allow_blank=True,
        help_text="Why; recorded as the saga's error and in its cancel event. "
                  "Left out or blank: `cancelled`.",
    )


class SagaPauseInputSerializer(serializers.Serializer):
    reason = TextField(max_length=2000, required=False, allow_blank=True,
                       help_text="Why; recorded in its `saga_paused` event.")


class SagaResumeInputSerializer(serializers.Serializer):
    input = JSONObjectField(required=False, default=None, help_text=(
        "Fields merged over the saga's input before it goes on (validated as a start's input would be): "
        "correct the value that made a step fail. Left out: the input as it is."))


class StepSkipInputSerializer(serializers.Serializer):
    result = JSONObjectField(required=False, default=None, help_text=(
        "The step's output, as if its action had returned it (the work done by hand): later steps see it "
        "in `ctx.results`."))
    reason = TextField(min_length=1, max_length=2000, help_text="Why the step is skipped; recorded in its event.")


class StepCompleteInputSerializer(serializers.Serializer):
    result = JSONObjectField(required=False, default=None,
                             help_text="Merged over the action's output to make the step's result (a JSON object).")


class StepFailInputSerializer(serializers.Serializer):
    # Kept as given (not trimmed): what the schema calls a non-empty string is one.
    error = TextField(min_length=1, max_length=2000, trim_whitespace=False,
                      help_text="Why the step fails; recorded as its error. The saga compensates.")


IDEMPOTENCY_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
                          "pattern": NO_NUL_PATTERN}


def idempotency_key_from(headers) -> str | None:
    """The request's ``Idempotency-Key`` (surrounding spaces removed), or None when it has none.

    Checked like a body field, so a bad key is a 400 on the header: blank,
    longer than 255 characters, or holding NUL or lone surrogate characters
    (which no database column can store).
    """
    raw = headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    field = serializers.CharField(max_length=IDEMPOTENCY_KEY_MAX_LENGTH, error_messages={
        "blank": IDEMPOTENCY_KEY_LENGTH_ERROR, "max_length": IDEMPOTENCY_KEY_LENGTH_ERROR})
    try:
        return field.run_validation(raw)
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({IDEMPOTENCY_HEADER: exc.detail}) from None


# --- output -----------------------------------------------------------------------


class ModelOutputSerializer(serializers.ModelSerializer):
    """A read-only ModelSerializer that builds its fields from the model once per class, not once per answer.

    DRF works a ModelSerializer's fields out of the model's metadata for
    every instance: a sixth of a ``POST /api/sagas/`` (profiled in one
    process). Here the first instance builds them and later ones get copies,
    as a plain Serializer copies its declared fields.
    """

    def get_fields(self):
        cls = type(self)
        if "_built_fields" not in cls.__dict__:
            cls._built_fields = super().get_fields()
        return copy.deepcopy(cls._built_fields)


class StepRecordOutputSerializer(ModelOutputSerializer):
    result = serializers.JSONField(read_only=True, help_text="What the action returned: any JSON value, or null.")

    class Meta:
        model = StepRecord
        fields = [
            "index", "name", "status", "has_compensation", "attempts", "result", "error", "started_at",
            "finished_at", "compensation_attempts", "compensation_error", "compensated_at", "stage", "parallel_group",
            "waiting_since", "signal_deadline",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "stage": {"help_text": "Steps of one stage run at once; stages run one after another."},
            "parallel_group": {"help_text": "Name of the Parallel this step is a member of; null for a plain step."},
        }


def children_in_order(saga: SagaInstance) -> list[SagaInstance]:
    """Ids of a saga's children, oldest first: prefetched with a list (``children``), read otherwise
    (none for a saga just started)."""
    cached = getattr(saga, "_prefetched_objects_cache", {}).get("children")
    if cached is not None:
        return sorted((child for child in cached), key=lambda child: child.created_at)
    if getattr(saga, "created_now", False):
        return []
    return list(saga.children.order_by("created_at"))


class SagaInstanceOutputSerializer(ModelOutputSerializer):
    input = JSONObjectField(read_only=True)
    results = JSONObjectField(source="current_results", read_only=True,
                              help_text="Step name -> output of each step that succeeded.")
    steps = StepRecordOutputSerializer(source="step_records", many=True, read_only=True)
    parent = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True,
        help_text="The saga whose `ChildSaga` step started this one; null for a root saga.")
    parent_step = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True,
        help_text="The name of the parent's step whose work this saga is; null for a root saga.")
    depth = serializers.IntegerField(read_only=True, help_text="0 for a root saga, its parent's + 1 for a child.")
    children = serializers.SerializerMethodField(help_text="Ids of the child sagas its steps started, oldest first.")

    class Meta:
        model = SagaInstance
        fields = [
            "id", "saga_type", "version", "status", "input", "results", "error", "idempotency_key",
            "resubmitted_from", "started_by", "created_at", "started_at", "finished_at", "updated_at", "cancel_requested_at",
            "paused_from", "pause_cause", "parent", "parent_step", "depth", "children", "steps",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "array", "items": {"type": "string", "format": "uuid"}})
    def get_children(self, saga: SagaInstance) -> list[str]:
        return [str(child.pk) for child in children_in_order(saga)]


class SagaTreeNodeOutputSerializer(serializers.Serializer):
    """One saga of a tree (``GET /api/sagas/{id}/tree/``), with its children's nodes."""

    id = serializers.UUIDField()
    saga_type = serializers.CharField()
    version = serializers.IntegerField()
    status = serializers.CharField()
    error = serializers.CharField(allow_blank=True)
    parent = serializers.UUIDField(allow_null=True)
    parent_step = serializers.CharField(allow_null=True, help_text="The parent's step whose work this saga is.")
    depth = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    children = serializers.SerializerMethodField(
        help_text="Its children that you may read, oldest first, each a node like this one.")

    @extend_schema_field({"type": "array", "items": {"$ref": "#/components/schemas/SagaTreeNodeOutput"}})
    def get_children(self, node: dict) -> list[dict]:
        return [SagaTreeNodeOutputSerializer(child).data for child in node["children"]]


class SagaTreeOutputSerializer(serializers.Serializer):
    root = SagaTreeNodeOutputSerializer(help_text="The saga asked for, with its descendants.")
    nodes = serializers.IntegerField(help_text="How many sagas the tree shows.")
    truncated = serializers.BooleanField(
        help_text="True when the tree has more sagas than one answer shows (the deepest left out): "
                  "ask for a child's tree to see below it.")


class SagaEventOutputSerializer(ModelOutputSerializer):
    step = serializers.CharField(source="step.name", read_only=True, allow_null=True, default=None,
                                 help_text="Name of the step the event concerns; null for the saga itself.")
    step_index = serializers.IntegerField(source="step.index", read_only=True, allow_null=True, default=None)
    detail = JSONObjectField(read_only=True)

    class Meta:
        model = SagaEvent
        fields = ["id", "kind", "step", "step_index", "detail", "created_at"]
        read_only_fields = fields


class WaitingStepOutputSerializer(serializers.Serializer):
    """A step now waiting for a signal; never its token."""

    saga_id = serializers.UUIDField(source="saga.id")
    saga_type = serializers.CharField(source="saga.saga_type")
    step = serializers.CharField(source="name")
    index = serializers.IntegerField()
    since = serializers.DateTimeField(source="waiting_since", allow_null=True,
                                      help_text="When the step began to wait (its action had succeeded).")
    deadline = serializers.DateTimeField(source="signal_deadline", allow_null=True,
                                         help_text="When the wait times out and the saga compensates; null: never.")
    result = serializers.JSONField(help_text="The action's output, as the step keeps it while it waits.")


class RetryPolicyOutputSerializer(serializers.Serializer):
    max_attempts = serializers.IntegerField()
    backoff = serializers.FloatField()
    max_backoff = serializers.FloatField()


class ChildSagaDefinitionOutputSerializer(serializers.Serializer):
    saga_type = serializers.CharField()
    version = serializers.IntegerField(allow_null=True, help_text="null: the latest when it starts.")
    timeout = serializers.FloatField(allow_null=True, help_text="Seconds the child may take; null: no deadline.")


class StepDefinitionOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    has_compensation = serializers.BooleanField()
    retry = RetryPolicyOutputSerializer()
    timeout = serializers.FloatField(allow_null=True)
    compensation_retry = RetryPolicyOutputSerializer()
    transactional = serializers.BooleanField()
    wait_for_signal = serializers.BooleanField(help_text="Its action's success makes it wait for a signal.")
    signal_timeout = serializers.FloatField(allow_null=True, help_text="Seconds a wait may last; null: no deadline.")
    signal_permission = serializers.CharField(
        allow_null=True, help_text="The permission a user needs to signal it; null: any authenticated user.")
    stage = serializers.IntegerField(help_text="Steps of one stage run at once; stages run one after another.")
    parallel_group = serializers.CharField(
        allow_null=True, help_text="Name of the Parallel this step is a member of; null for a plain step.")
    conditional = serializers.BooleanField(
        help_text="It (or its Parallel) has a `when`: asked when its turn comes, false skips it.")
    child_saga = ChildSagaDefinitionOutputSerializer(
        allow_null=True, help_text="A `ChildSaga` step: the saga it starts; null for any other step.")


class SagaTypeOutputSerializer(serializers.Serializer):
    """One registered definition, as ``Saga.describe()`` gives it."""

    name = serializers.CharField()
    version = serializers.IntegerField()
    description = serializers.CharField(allow_blank=True)
    rehearsal = serializers.BooleanField(help_text=(
        "A rehearsal of another version's flow (for drills: deadlines of seconds, say), not for real work."))
    input_schema = JSONObjectField(help_text=(
        "The input this version takes, as JSON Schema (2020-12), generated from its definition; ids of rows "
        "are listed when you may start the type. `POST /api/sagas/` with `saga_type`, this `version` and an "
        "`input` it describes."))
    input_example = JSONObjectField(help_text="An input this version accepts (its required fields).")
    steps = StepDefinitionOutputSerializer(many=True)


class AuthTokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as `Authorization: Token <token>`; the same one every time "
                                            "until an admin deletes it.")


class ErrorOutputSerializer(serializers.Serializer):
    """Every error of the API: what went wrong, and a stable code to branch on."""

    detail = serializers.CharField()
    code = serializers.CharField(help_text="e.g. `not_found`, `invalid_transition`, `throttled`, "
                                           "`request_too_large`, `unsupported_media_type`")


class FieldErrorsOutputSerializer(serializers.Serializer):
    """A 400: ``detail`` and ``code``, and beside them each field's errors (field name -> list of messages)."""

    detail = serializers.CharField()
    code = serializers.CharField(help_text="`invalid`, or what the engine refused: `unknown_saga_type`, "
                                           "`unknown_version`, `invalid_input`, `invalid_signal`")


class AnalyticsQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(
        required=False,
        help_text="sagas created at or after this moment; left out: 24 hours before `until` (or now)")
    until = serializers.DateTimeField(required=False, help_text="sagas created before this moment")
    saga_type = TextField(required=False, max_length=200, trim_whitespace=False, help_text="only this saga type")
    root = serializers.ChoiceField(
        choices=["true", "false"], required=False,
        help_text="`true`: only root sagas; `false`: only child sagas (started by another saga's `ChildSaga` "
                  "step); left out: both")

    def validate(self, attrs: dict) -> dict:
        """A parameter sent empty (``?until=``) is an error, as the schema says, not a silent "left out"."""
        blank = [name for name in self.fields if self.initial_data.get(name, None) == ""]
        if blank:
            raise serializers.ValidationError({name: [BLANK_PARAMETER_ERROR] for name in blank})
        return attrs


class ErrorCountOutputSerializer(serializers.Serializer):
    error = serializers.CharField()
    count = serializers.IntegerField()


class SagaStatsOutputSerializer(serializers.Serializer):
    """``analytics.SagaTypeStats.as_dict()``; ``saga_type`` is ``*`` for all types together."""

    saga_type = serializers.CharField()
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Every saga status -> sagas in it.")
    finished = serializers.IntegerField()
    active = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True, help_text="succeeded / finished")
    compensation_rate = serializers.FloatField(allow_null=True, help_text="(compensated + failed) / finished")
    p50_seconds = serializers.FloatField(allow_null=True)
    p95_seconds = serializers.FloatField(allow_null=True)
    top_errors = ErrorCountOutputSerializer(many=True)
    roots = serializers.IntegerField(help_text="Of `total`: root sagas (no parent).")
    children = serializers.IntegerField(help_text="Of `total`: child sagas (started by another saga's step).")


class StepStatsOutputSerializer(serializers.Serializer):
    """``analytics.StepStats.as_dict()``."""

    saga_type = serializers.CharField()
    index = serializers.IntegerField()
    step = serializers.CharField()
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Every step status -> records in it.")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    compensated = serializers.IntegerField()
    compensation_failed = serializers.IntegerField()
    retried_attempts = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True, help_text="succeeded / (succeeded + failed)")
    compensation_rate = serializers.FloatField(allow_null=True,
                                               help_text="(compensated + compensation_failed) / succeeded")
    p50_seconds = serializers.FloatField(allow_null=True)
    p95_seconds = serializers.FloatField(allow_null=True)
    top_errors = ErrorCountOutputSerializer(many=True)


class AnalyticsWindowOutputSerializer(serializers.Serializer):
    since = serializers.DateTimeField(help_text="The window used: given, or the default.")
    until = serializers.DateTimeField(allow_null=True)
    saga_type = serializers.CharField(allow_null=True)
    root = serializers.BooleanField(allow_null=True, help_text="true: root sagas only; false: child sagas only; "
                                                               "null: both.")


class AnalyticsOutputSerializer(serializers.Serializer):
    window = AnalyticsWindowOutputSerializer()
    overall = SagaStatsOutputSerializer()
    saga_types = SagaStatsOutputSerializer(many=True)
    steps = StepStatsOutputSerializer(many=True)
