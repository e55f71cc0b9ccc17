"""What goes in and out of the API. Shapes only: the engine decides everything else.

Input serializers check the shape of a request; the saga's own rules (is the
type registered, does the input match its schema, is the move allowed) are
the engine's, and its typed errors become responses in ``exceptions``.
"""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import SagaEvent, SagaInstance, StepRecord


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.JSONField):
    """Any JSON value on the wire, documented as an object: the engine rejects the rest with a field error."""


# --- input ------------------------------------------------------------------------


class SagaStartInputSerializer(serializers.Serializer):
    saga_type = serializers.CharField(max_length=200, help_text="A registered saga name (see /api/saga-types/).")
    version = serializers.IntegerField(
        min_value=1, required=False, help_text="A registered version; the latest one when left out."
    )
    input = JSONObjectField(required=False, default=dict, help_text="The saga's input, a JSON object.")


class SagaCancelInputSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=1000, required=False, default="cancelled",
        help_text="Why; recorded as the saga's error and in its cancel event.",
    )


# --- output -----------------------------------------------------------------------


class StepRecordOutputSerializer(serializers.ModelSerializer):
    result = serializers.JSONField(read_only=True, help_text="What the action returned: any JSON value, or null.")

    class Meta:
        model = StepRecord
        fields = [
            "index", "name", "status", "has_compensation", "attempts", "result", "error", "started_at",
            "finished_at", "compensation_attempts", "compensation_error", "compensated_at", "stage", "parallel_group",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "stage": {"help_text": "Steps of one stage run at once; stages run one after another."},
            "parallel_group": {"help_text": "Name of the Parallel this step is a member of; null for a plain step."},
        }


class SagaInstanceOutputSerializer(serializers.ModelSerializer):
    input = JSONObjectField(read_only=True)
    results = JSONObjectField(read_only=True, help_text="Step name -> output of each step that succeeded.")
    steps = StepRecordOutputSerializer(many=True, read_only=True)

    class Meta:
        model = SagaInstance
        fields = [
            "id", "saga_type", "version", "status", "input", "results", "error", "idempotency_key",
            "resubmitted_from", "created_at", "started_at", "finished_at", "updated_at", "cancel_requested_at",
            "steps",
        ]
        read_only_fields = fields


class SagaEventOutputSerializer(serializers.ModelSerializer):
    step = serializers.CharField(source="step.name", read_only=True, allow_null=True, default=None,
                                 help_text="Name of the step the event concerns; null for the saga itself.")
    step_index = serializers.IntegerField(source="step.index", read_only=True, allow_null=True, default=None)
    detail = JSONObjectField(read_only=True)

    class Meta:
        model = SagaEvent
        fields = ["id", "kind", "step", "step_index", "detail", "created_at"]
        read_only_fields = fields


class RetryPolicyOutputSerializer(serializers.Serializer):
    max_attempts = serializers.IntegerField()
    backoff = serializers.FloatField()
    max_backoff = serializers.FloatField()


class StepDefinitionOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    has_compensation = serializers.BooleanField()
    retry = RetryPolicyOutputSerializer()
    timeout = serializers.FloatField(allow_null=True)
    compensation_retry = RetryPolicyOutputSerializer()
    transactional = serializers.BooleanField()
    stage = serializers.IntegerField(help_text="Steps of one stage run at once; stages run one after another.")
    parallel_group = serializers.CharField(
        allow_null=True, help_text="Name of the Parallel this step is a member of; null for a plain step.")


class SagaTypeOutputSerializer(serializers.Serializer):
    """One registered definition, as ``Saga.describe()`` gives it."""

    name = serializers.CharField()
    version = serializers.IntegerField()
    description = serializers.CharField(allow_blank=True)
    steps = StepDefinitionOutputSerializer(many=True)


class ErrorOutputSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField(required=False)


class AnalyticsQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="sagas created at or after this moment")
    until = serializers.DateTimeField(required=False, help_text="sagas created before this moment")
    saga_type = serializers.CharField(required=False, help_text="only this saga type")
