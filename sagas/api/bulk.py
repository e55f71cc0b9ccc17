"""``/api/bulk-actions/``: one action over every saga matching a filter, as a background job (``sagas.bulk``).

Thin, as the other views: shapes in, ``sagas.bulk`` decides, shapes out.
Who may: ``sagas.run_bulk_actions`` and the action's own permission to ask
for one (403 otherwise); each saga's permissions are checked again when the
job acts on it. A user reads their own jobs; one holding
``sagas.view_bulkaction`` reads everyone's (``access.visible_bulk_actions``).
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import access, bulk
from ..models import BulkAction, BulkActionKind, SagaStatus
from .serializers import NO_NUL_PATTERN, ErrorOutputSerializer, ModelOutputSerializer, TextField
from .views import BAD_REQUEST, TAG

DATE_TIME = {"type": "string", "format": "date-time"}
BULK_FILTER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "description": (
        "Which sagas: those matching every key given (`{}`: every saga you may read), created before the "
        "job was asked for. The saga list's filters (`status`, any of them; `saga_type`; `created_after` "
        "inclusive, `created_before` exclusive, ISO 8601) and `ids`."),
    "properties": {
        "status": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": SagaStatus.values}},
        "saga_type": {"type": "string", "minLength": 1, "pattern": NO_NUL_PATTERN},
        "created_after": DATE_TIME,
        "created_before": DATE_TIME,
        "ids": {"type": "array", "minItems": 1, "maxItems": bulk.MAX_IDS,
                "items": {"type": "string", "format": "uuid"}},
    },
}
REFUSED_SCHEMA = {
    "type": "array",
    "description": "The sagas not acted on, and why: the engine refused the move (already finished, past its "
                   "pivot) or you may not make it on that saga.",
    "items": {"type": "object", "required": ["saga_id", "reason"], "properties": {
        "saga_id": {"type": "string", "format": "uuid"}, "reason": {"type": "string"}}},
}


@extend_schema_field(BULK_FILTER_SCHEMA)
class BulkFilterField(serializers.JSONField):
    """Any JSON on the wire: ``sagas.bulk.validate`` judges it with the saga list's own filters."""


@extend_schema_field(REFUSED_SCHEMA)
class RefusedField(serializers.JSONField):
    """The stored list as it is: a job over thousands of sagas may refuse thousands."""


class ReasonField(TextField):
    """Text only: a number is refused, as the schema says, rather than turned into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class BulkActionInputSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=BulkActionKind.choices,
                                     help_text="The engine function each matching saga goes through.")
    filter = BulkFilterField()
    reason = ReasonField(max_length=1000, required=False, allow_blank=True, default="",
                       help_text="For `cancel` and `pause`: recorded on each saga. Left out or blank: "
                                 "`cancelled by bulk action <id>` (or `paused ...`).")


class BulkActionOutputSerializer(ModelOutputSerializer):
    filter = BulkFilterField(read_only=True)
    refused = RefusedField(read_only=True)

    class Meta:
        model = BulkAction
        fields = ["id", "action", "filter", "reason", "status", "matched", "succeeded", "refused", "error",
                  "requested_by", "created_at", "finished_at"]
        read_only_fields = fields
        extra_kwargs = {
            "matched": {"help_text": "Sagas matching when the job was asked for; once it is done, the sagas "
                                     "it acted on or refused (one that stopped matching before its turn is "
                                     "not counted)."},
            "succeeded": {"help_text": "Sagas the engine moved."},
            "error": {"help_text": "Why the job stopped before its end (its user lost the permission or was "
                                   "removed), or empty."},
        }


FORBIDDEN = OpenApiResponse(ErrorOutputSerializer, description=(
    "You lack `sagas.run_bulk_actions`, or the action's own permission (`sagas.cancel_saga`, ...)."))
NOT_FOUND = OpenApiResponse(ErrorOutputSerializer, description="No bulk action with this id that you may read.")
LOCATION = OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[202],
                            description="URL of the bulk action.")
BULK_ACTION_ID = OpenApiParameter("bulk_action_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                  description="The bulk action's id.")


def bulk_action_url(request: Request, job: BulkAction) -> str:
    return request.build_absolute_uri(reverse("sagas_api:bulk-action-detail", kwargs={"bulk_action_id": job.pk}))


class BulkActionCreateApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Start a bulk action over every saga matching a filter",
        description=(
            "Answers at once with the job; it runs in the background, in batches, each saga through the "
            "engine function the single action calls (`POST /api/sagas/{saga_id}/cancel/`, ...) as you. "
            "Follow `Location` for its progress. A saga the engine refuses, or that you may not move, is "
            "listed in `refused` with the reason."),
        request=BulkActionInputSerializer, parameters=[LOCATION],
        responses={202: OpenApiResponse(BulkActionOutputSerializer, description="The job, asked for."),
                   400: BAD_REQUEST, 403: FORBIDDEN},
    )
    def post(self, request: Request) -> Response:
        _allowed(request)
        params = BulkActionInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        _allowed(request, params.validated_data["action"])
        job = bulk.bulk_action_create(**params.validated_data, by=request.user)
        return Response(BulkActionOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": bulk_action_url(request, job)})


class BulkActionDetailApi(APIView):
    @extend_schema(tags=[TAG], summary="A bulk action and its progress", parameters=[BULK_ACTION_ID],
                   responses={200: BulkActionOutputSerializer, 403: FORBIDDEN, 404: NOT_FOUND})
    def get(self, request: Request, bulk_action_id: str) -> Response:
        if not access.may_read_bulk_action(request.user):
            raise PermissionDenied(f"bulk actions need the permission {access.MOVES['bulk']}")
        return Response(BulkActionOutputSerializer(bulk.bulk_action_get(bulk_action_id, request.user)).data)


def _allowed(request: Request, action: str | None = None) -> None:
    refusal = bulk.missing_permission(request.user, action)
    if refusal:
        raise PermissionDenied(refusal)
