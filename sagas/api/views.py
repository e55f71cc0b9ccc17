"""Thin views: parse the request, call the engine, shape the answer.

No view sets a status: starting, cancelling, resubmitting and retrying
compensation are calls to ``sagas.engine``, whose typed errors become
responses in ``sagas.api.exceptions``.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.views import APIView

from .. import access, analytics, engine
from ..definitions import registry
from ..input_schemas import example_input, input_schema
from ..models import SagaEvent, SagaInstance, StepRecord
from ..selectors import TREE_MAX_NODES, saga_tree, waiting_steps_for
from .exceptions import IDEMPOTENCY_HEADER
from .filters import SagaInstanceFilter
from .pagination import SagaCursorPagination
from .serializers import (
    IDEMPOTENCY_KEY_SCHEMA,
    NO_NUL_PATTERN,
    AnalyticsOutputSerializer,
    AuthTokenOutputSerializer,
    AnalyticsQuerySerializer,
    ErrorOutputSerializer,
    FieldErrorsOutputSerializer,
    SagaCancelInputSerializer,
    SagaEventOutputSerializer,
    SagaInstanceOutputSerializer,
    SagaPauseInputSerializer,
    SagaResumeInputSerializer,
    SagaStartInputSerializer,
    SagaTreeOutputSerializer,
    SagaTypeOutputSerializer,
    StepCompleteInputSerializer,
    StepFailInputSerializer,
    StepSkipInputSerializer,
    WaitingStepOutputSerializer,
    idempotency_key_from,
)
from .throttles import AuthTokenThrottle, SignalTokenThrottle

TAG = "sagas"

REPLAYED_HEADER = "Idempotent-Replayed"

NOT_FOUND = OpenApiResponse(ErrorOutputSerializer, description="No saga with this id.")
NO_SUCH_PAGE = OpenApiResponse(ErrorOutputSerializer,
                              description="No such page: `page` past the last one, empty or not a number from 1.")
NOT_FOUND_OR_NO_SUCH_PAGE = OpenApiResponse(
    ErrorOutputSerializer, description="No saga with this id, or no such page (see the saga list).")
FORBIDDEN_MOVE = OpenApiResponse(ErrorOutputSerializer, description="You lack the move's permission.")
CONFLICT = OpenApiResponse(ErrorOutputSerializer,
                           description="The saga's state does not allow this (code `invalid_transition`).")
BAD_REQUEST = OpenApiResponse(FieldErrorsOutputSerializer, description=(
    "`detail` and `code`, and the field errors beside them: field name -> list of messages."))
SAGA_ID = OpenApiParameter("saga_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The saga instance's id.")
LOCATION = OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[202],
                            description="URL of the saga instance.")


def saga_instances() -> QuerySet[SagaInstance]:
    """Instances with their steps and their children's ids loaded in two more queries, newest first."""
    children = Prefetch("children", queryset=SagaInstance.objects.only("id", "parent_id", "created_at"))
    return SagaInstance.objects.select_related("parent_step").prefetch_related("steps", children)


def saga_get(saga_id: str) -> SagaInstance:
    """The instance ``saga_id`` names; a malformed id is as unknown as a missing one."""
    try:
        pk = uuid.UUID(str(saga_id))
    except ValueError:
        raise SagaInstance.DoesNotExist(f"no saga {saga_id}") from None
    return saga_instances().get(pk=pk)


def saga_for(request: Request, saga_id: str, move: str = "view") -> SagaInstance:
    """The saga ``saga_id`` names, if ``request.user`` may make ``move`` on it (``sagas.access``).

    A saga the user may not read at all is as unknown as a missing one (404);
    one they may read but not move answers 403.
    """
    saga = saga_get(saga_id)
    if not access.may(request.user, "view", saga):
        raise SagaInstance.DoesNotExist(f"no saga {saga_id}")
    if move != "view" and not access.may(request.user, move, saga):
        raise PermissionDenied(f"{move.replace('_', ' ')} needs the permission {access.MOVES[move]}"
                               + _type_permission_note(saga.saga_type))
    return saga


def _type_permission_note(saga_type: str) -> str:
    definition = access.definition_named(saga_type)
    return f" and {definition.permission}" if definition and definition.permission else ""


def shown(request: Request, data: dict) -> dict:
    """A saga's answer (``SagaInstanceOutputSerializer``) with its sensitive fields masked for this user."""
    return data if access.sees_sensitive(request.user) else access.masked_saga(data)


def saga_url(request: Request, saga: SagaInstance) -> str:
    return request.build_absolute_uri(reverse("sagas_api:saga-detail", kwargs={"saga_id": saga.pk}))


def accepted(request: Request, saga: SagaInstance, *, location: bool = False) -> Response:
    """202 with the instance: the work goes on in the workers."""
    headers = {"Location": saga_url(request, saga)} if location else None
    return Response(shown(request, SagaInstanceOutputSerializer(saga).data), status=status.HTTP_202_ACCEPTED,
                    headers=headers)


# The root's answer: name -> URL of every endpoint that takes no id.
ENDPOINT_LINKS = {"type": "object", "additionalProperties": {"type": "string", "format": "uri"},
                  "example": {"saga-types": "http://127.0.0.1:8000/api/saga-types/",
                              "sagas": "http://127.0.0.1:8000/api/sagas/"}}


class ApiRootApi(APIView):
    """Where everything is: each endpoint that takes no id, with its URL (open to anyone, as the schema is)."""

    permission_classes = [AllowAny]

    def get_view_name(self) -> str:
        return "Saga orchestrator API"

    @extend_schema(tags=[TAG], summary="The API's endpoints", auth=[],
                   description="Each endpoint that needs no id, by its path under `/api/`, with its URL; "
                               "`schema` and `docs` are the OpenAPI schema and its browsable docs.",
                   responses={200: OpenApiResponse(ENDPOINT_LINKS, description="name -> URL")})
    def get(self, request: Request) -> Response:
        from .urls import urlpatterns  # they name this view

        links = {str(p.pattern).strip("/"): request.build_absolute_uri(reverse(f"sagas_api:{p.name}"))
                 for p in urlpatterns if p.pattern.converters == {} and str(p.pattern)}
        for name in ("schema", "docs"):
            links[name] = request.build_absolute_uri(reverse(f"api-{name}"))
        return Response(links)


class AuthTokenApi(APIView):
    """A user's API token for a username and password (DRF's ``obtain_auth_token``, in this API's ways:
    JSON only, its error shape, throttled per client address like the other endpoints without credentials)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [AuthTokenThrottle]

    @extend_schema(
        tags=["auth"], summary="Get a user's API token", auth=[], request=AuthTokenSerializer,
        description="The token of the user these credentials name (created on first use). Bad credentials, or "
                    "an inactive user, answer 400 with the error under `non_field_errors`.",
        # 429 (too many tries from this address, with Retry-After) as on every throttled operation: schema.py.
        responses={200: AuthTokenOutputSerializer, 400: BAD_REQUEST},
    )
    def post(self, request: Request) -> Response:
        params = AuthTokenSerializer(data=request.data, context={"request": request})
        params.is_valid(raise_exception=True)
        token, _ = Token.objects.get_or_create(user=params.validated_data["user"])
        return Response(AuthTokenOutputSerializer({"token": token.key}).data)


class SagaTypeListApi(APIView):
    """The saga definitions this process has registered."""

    @extend_schema(tags=[TAG], summary="List registered saga types",
                   description="Every registered version of each type you may use, with its steps and its "
                               "input as JSON Schema (with an example); rehearsal versions say so.",
                   responses={200: SagaTypeOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        usable = [{**saga.describe(), "input_schema": input_schema(saga, request.user),
                   "input_example": example_input(saga, request.user)}
                  for saga in registry if access.may_use_type(request.user, saga.name)]
        return Response(SagaTypeOutputSerializer(usable, many=True).data)


class SagaListCreateApi(GenericAPIView):
    """Start a saga, or list them (paginated, filtered)."""

    queryset = SagaInstance.objects.none()  # for the schema generator; get_queryset is what runs
    filterset_class = SagaInstanceFilter
    serializer_class = SagaInstanceOutputSerializer
    pagination_class = SagaCursorPagination

    def get_queryset(self) -> QuerySet[SagaInstance]:
        return access.visible(self.request.user, saga_instances())

    @extend_schema(
        tags=[TAG], summary="List saga instances",
        description=(
            "Newest first. `status` may be repeated (`?status=failed&status=compensating`); "
            "`created_after` is inclusive, `created_before` exclusive (ISO 8601 date-times). "
            "`parent` lists one saga's children; `root=true` only root sagas, `root=false` only child sagas. "
            "Pages are cursors: follow `next` (and `previous`); `count` is always null, since counting "
            "every matching saga for each page is what made a page cost as much as the table."
        ),
        parameters=[OpenApiParameter("saga_type", {"type": "string", "minLength": 1, "pattern": NO_NUL_PATTERN},
                                     OpenApiParameter.QUERY, description="Only this saga type.")],
        responses={200: SagaInstanceOutputSerializer(many=True), 400: BAD_REQUEST,
                   404: OpenApiResponse(ErrorOutputSerializer, description="A cursor this list did not give out.")},
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        data = [shown(request, saga) for saga in SagaInstanceOutputSerializer(page, many=True).data]
        return self.get_paginated_response(data)

    @extend_schema(
        tags=[TAG],
        summary="Start a saga",
        description=(
            "Validates the input, records the instance and its steps and enqueues the work. "
            f"With an `{IDEMPOTENCY_HEADER}` already used for this saga type (and the same input) "
            f"it starts nothing and answers the existing instance, with `{REPLAYED_HEADER}: true`."
        ),
        request=SagaStartInputSerializer,
        parameters=[
            OpenApiParameter(IDEMPOTENCY_HEADER, IDEMPOTENCY_KEY_SCHEMA, OpenApiParameter.HEADER, required=False,
                             description="1 to 255 characters; the same key never starts a second saga of this type."),
            LOCATION,
            OpenApiParameter(REPLAYED_HEADER, str, OpenApiParameter.HEADER, response=[202],
                             description="`true` when the key answered an instance started earlier."),
        ],
        responses={
            202: OpenApiResponse(SagaInstanceOutputSerializer, description="Started (or replayed)."),
            400: OpenApiResponse(OpenApiTypes.OBJECT, description=(
                "Field errors: field name -> list of messages. Besides the body's shape, a version this saga "
                "type does not have, an input the saga's own rules refuse (they may look rows up) and a bad "
                f"`{IDEMPOTENCY_HEADER}` answer 400, so a body the schema accepts may still be refused.")),
            409: OpenApiResponse(ErrorOutputSerializer,
                                 description="The key was used with another input (code `idempotency_conflict`)."),
        },
    )
    def post(self, request: Request) -> Response:
        params = SagaStartInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga_type = params.validated_data["saga_type"]
        if not access.may(request.user, "start", saga_type=saga_type):
            raise PermissionDenied(f"starting needs the permission {access.MOVES['start']}"
                                   + _type_permission_note(saga_type))
        saga = engine.start_saga(
            saga_type,
            input=params.validated_data["input"],
            idempotency_key=idempotency_key_from(request.headers),
            version=params.validated_data.get("version"),
            by=request.user,
        )
        if not saga.created_now:
            response = accepted(request, saga_get(saga.pk), location=True)
            response[REPLAYED_HEADER] = "true"
            return response
        return accepted(request, saga, location=True)  # as start_saga wrote it


class SagaDetailApi(APIView):
    @extend_schema(tags=[TAG], summary="One saga instance with its steps", parameters=[SAGA_ID],
                   responses={200: SagaInstanceOutputSerializer, 404: NOT_FOUND})
    def get(self, request: Request, saga_id: str) -> Response:
        return Response(shown(request, SagaInstanceOutputSerializer(saga_for(request, saga_id)).data))


class SagaTreeApi(APIView):
    @extend_schema(
        tags=[TAG], summary="A saga with its child sagas, their children and so on", parameters=[SAGA_ID],
        description=(
            "The saga and every descendant you may read, each with its status, nested under its parent "
            "(a root saga's whole tree in one call). At most "
            f"{TREE_MAX_NODES} sagas and `SAGAS_MAX_DEPTH` levels below it: `truncated` says when some "
            "were left out. A child you may not read is left out with what is below it."),
        responses={200: SagaTreeOutputSerializer, 404: NOT_FOUND},
    )
    def get(self, request: Request, saga_id: str) -> Response:
        tree = saga_tree(request.user, saga_for(request, saga_id))
        return Response(SagaTreeOutputSerializer(tree).data)


class SagaEventListApi(GenericAPIView):
    """The audit trail of one saga, oldest first."""

    queryset = SagaEvent.objects.none()
    serializer_class = SagaEventOutputSerializer

    def get_queryset(self) -> QuerySet[SagaEvent]:
        self.saga = saga_for(self.request, self.kwargs["saga_id"])
        return SagaEvent.objects.filter(saga=self.saga).select_related("step").order_by("created_at", "id")

    @extend_schema(tags=[TAG], summary="The audit trail of a saga", parameters=[SAGA_ID],
                   responses={200: SagaEventOutputSerializer(many=True), 404: NOT_FOUND_OR_NO_SUCH_PAGE})
    def get(self, request: Request, saga_id: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        data = SagaEventOutputSerializer(page, many=True).data
        for event in data:
            event["detail"] = access.shown(request.user, self.saga.saga_type, event["detail"])
        return self.get_paginated_response(data)


class SagaResubmitApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Resubmit a finished saga", request=None, parameters=[SAGA_ID, LOCATION],
        description="Starts a new instance of the latest version with the same input, linked by `resubmitted_from`.",
        responses={202: OpenApiResponse(SagaInstanceOutputSerializer, description="The new instance."),
                   400: BAD_REQUEST, 404: NOT_FOUND, 409: CONFLICT},
    )
    def post(self, request: Request, saga_id: str) -> Response:
        new = engine.resubmit(saga_for(request, saga_id, "resubmit"), by=request.user)
        return accepted(request, saga_get(new.pk), location=True)


class SagaCancelApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Cancel a pending, running or paused saga (before its pivot)", request=SagaCancelInputSerializer,
        parameters=[SAGA_ID],
        description="A step attempt in progress may finish; then what ran is compensated, in reverse.",
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 404: NOT_FOUND, 409: CONFLICT},
    )
    def post(self, request: Request, saga_id: str) -> Response:
        params = SagaCancelInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        reason = params.validated_data.get("reason")
        # Blank is "no reason": the engine's default one is recorded.
        saga = engine.cancel(saga_for(request, saga_id, "cancel"), by=request.user,
                             **({"reason": reason} if reason else {}))
        return accepted(request, saga_get(saga.pk))


PAUSE_CONFLICT = OpenApiResponse(ErrorOutputSerializer, description=(
    "The state machine does not allow the move (code `invalid_transition`): pause needs a pending, running or "
    "compensating saga; resume a paused one."))


class SagaPauseApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Pause a saga", request=SagaPauseInputSerializer, parameters=[SAGA_ID],
        description=("Nothing more starts (no next step, retry, compensation or resend) until it is resumed; an "
                     "attempt at work finishes and is recorded, as are signals. Needs `sagas.pause_saga`."),
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 403: FORBIDDEN_MOVE, 404: NOT_FOUND,
                   409: PAUSE_CONFLICT},
    )
    def post(self, request: Request, saga_id: str) -> Response:
        params = SagaPauseInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.pause(saga_for(request, saga_id, "pause"), reason=params.validated_data.get("reason", ""),
                            by=request.user)
        return accepted(request, saga_get(saga.pk))


class SagaResumeApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Resume a paused saga", request=SagaResumeInputSerializer, parameters=[SAGA_ID],
        description=("It goes back to the status it was paused from and does what its records say. A step after "
                     "the pivot that failed for good runs again with a fresh retry budget. `input` is merged over "
                     "the saga's input first (400 and nothing changed if the result is not a valid input)."),
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 403: FORBIDDEN_MOVE, 404: NOT_FOUND,
                   409: PAUSE_CONFLICT},
    )
    def post(self, request: Request, saga_id: str) -> Response:
        params = SagaResumeInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.resume(saga_for(request, saga_id, "resume"), input=params.validated_data["input"],
                             by=request.user)
        return accepted(request, saga_get(saga.pk))


class SagaRetryCompensationApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Retry the failed compensations of a failed saga", request=None,
        parameters=[SAGA_ID],
        responses={202: SagaInstanceOutputSerializer, 404: NOT_FOUND, 409: CONFLICT},
    )
    def post(self, request: Request, saga_id: str) -> Response:
        saga = engine.retry_compensation(saga_for(request, saga_id, "retry_compensation"), by=request.user)
        return accepted(request, saga_get(saga.pk))


STEP = OpenApiParameter("step", {"type": "string", "minLength": 1, "pattern": NO_NUL_PATTERN},
                        OpenApiParameter.PATH, description="The step's name.")
TOKEN = OpenApiParameter("token", {"type": "string", "minLength": 1, "pattern": NO_NUL_PATTERN},
                         OpenApiParameter.PATH, description="The wait's `ctx.signal_token`, as the step's action handed it out.")
STEP_NOT_FOUND = OpenApiResponse(ErrorOutputSerializer, description="No saga with this id, or it has no such step.")
NOT_WAITING = OpenApiResponse(ErrorOutputSerializer, description=(
    "The step is not waiting (never was, or already signalled, timed out or cancelled); code `invalid_transition`."))
FORBIDDEN = OpenApiResponse(ErrorOutputSerializer, description="You lack the step's `signal_permission`.")
UNKNOWN_TOKEN = OpenApiResponse(ErrorOutputSerializer, description="Unknown or used token (it dies with its wait).")


NOT_SKIPPABLE = OpenApiResponse(ErrorOutputSerializer, description=(
    "Only a step that failed for good after the pivot, of a paused saga, can be skipped; code `invalid_transition`."))


class StepSkipApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Skip a step that failed after the pivot (its work done by hand)",
        request=StepSkipInputSerializer, parameters=[SAGA_ID, STEP],
        description=("The step becomes `skipped` with `result` as its output, and the saga goes on with the next "
                     "step. Needs `sagas.pause_saga`."),
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 403: FORBIDDEN_MOVE, 404: STEP_NOT_FOUND,
                   409: NOT_SKIPPABLE},
    )
    def post(self, request: Request, saga_id: str, step: str) -> Response:
        params = StepSkipInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.skip_step(saga_for(request, saga_id, "skip"), step, result=params.validated_data["result"],
                                reason=params.validated_data["reason"], by=request.user)
        return accepted(request, saga_get(saga.pk))


class WaitingStepListApi(GenericAPIView):
    """What waits for this user: the steps now waiting that they may signal, oldest first."""

    queryset = StepRecord.objects.none()
    serializer_class = WaitingStepOutputSerializer

    def get_queryset(self) -> QuerySet[StepRecord]:
        return waiting_steps_for(self.request.user)

    @extend_schema(tags=[TAG], summary="Steps waiting for a signal this user may give",
                   responses={200: WaitingStepOutputSerializer(many=True), 404: NO_SUCH_PAGE})
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(WaitingStepOutputSerializer(page, many=True).data)


class StepCompleteApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Complete a waiting step", request=StepCompleteInputSerializer,
        parameters=[SAGA_ID, STEP],
        description="The step succeeds with the action's output merged with `result`; the saga goes on.",
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 403: FORBIDDEN, 404: STEP_NOT_FOUND,
                   409: NOT_WAITING},
    )
    def post(self, request: Request, saga_id: str, step: str) -> Response:
        params = StepCompleteInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.complete_step(saga_get(saga_id), step, result=params.validated_data["result"], by=request.user)
        return accepted(request, saga_get(saga.pk))


class StepFailApi(APIView):
    @extend_schema(
        tags=[TAG], summary="Fail a waiting step (a refusal)", request=StepFailInputSerializer,
        parameters=[SAGA_ID, STEP],
        description="The step fails for good with `error`; the saga compensates, this step included.",
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 403: FORBIDDEN, 404: STEP_NOT_FOUND,
                   409: NOT_WAITING},
    )
    def post(self, request: Request, saga_id: str, step: str) -> Response:
        params = StepFailInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.fail_step(saga_get(saga_id), step, error=params.validated_data["error"], by=request.user)
        return accepted(request, saga_get(saga.pk))


class TokenSignalApi(APIView):
    """Signals through a wait's token, for a system that holds no API credentials: the token is the credential."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [SignalTokenThrottle]


class SignalCompleteApi(TokenSignalApi):
    @extend_schema(
        tags=[TAG], summary="Complete the step waiting for this token", request=StepCompleteInputSerializer,
        parameters=[TOKEN], auth=[],
        description="As `POST /api/sagas/{saga_id}/steps/{step}/complete/`, once per token, with no other "
                    "authentication.",
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 404: UNKNOWN_TOKEN, 409: NOT_WAITING},
    )
    def post(self, request: Request, token: str) -> Response:
        params = StepCompleteInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.complete_step_by_token(token, result=params.validated_data["result"])
        return accepted(request, saga_get(saga.pk))


class SignalFailApi(TokenSignalApi):
    @extend_schema(
        tags=[TAG], summary="Fail the step waiting for this token", request=StepFailInputSerializer,
        parameters=[TOKEN], auth=[],
        description="As `POST /api/sagas/{saga_id}/steps/{step}/fail/`, once per token, with no other authentication.",
        responses={202: SagaInstanceOutputSerializer, 400: BAD_REQUEST, 404: UNKNOWN_TOKEN, 409: NOT_WAITING},
    )
    def post(self, request: Request, token: str) -> Response:
        params = StepFailInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        saga = engine.fail_step_by_token(token, error=params.validated_data["error"])
        return accepted(request, saga_get(saga.pk))


class AnalyticsApi(APIView):
    """Figures over the stored sagas in a time window: the same ones ``saga_demo`` prints."""

    @extend_schema(
        tags=[TAG], summary="Saga analytics",
        description=(
            "Per saga type, over all types and per step: counts by status, success and compensation "
            "rates, p50/p95 duration (seconds) and the most frequent errors, for sagas created in "
            "[`since`, `until`) (ISO 8601), optionally for one `saga_type`. Child sagas count under their "
            "own type like any saga; each figure says how many were `roots` and `children`, and `root=true` "
            "(only root sagas) or `root=false` (only child sagas) narrows every figure to one kind. Without `since` the window "
            "is the 24 hours before `until` (or before now); `window` in the answer says which one was used. "
            "A window longer than `SAGAS_ANALYTICS_MAX_WINDOW` (31 days by default) is cut to that length, "
            "ending at `until` (or now): `window.since` in the answer is then later than the one asked for. "
            "Computed in the database: the cost does not grow with what it returns."
        ),
        parameters=[AnalyticsQuerySerializer],
        responses={200: AnalyticsOutputSerializer, 400: BAD_REQUEST},
    )
    def get(self, request: Request) -> Response:
        if not access.may(request.user, "view"):
            raise PermissionDenied(f"analytics need the permission {access.MOVES['view']}")
        query = AnalyticsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        until, now = query.validated_data.get("until"), timezone.now()
        saga_type = query.validated_data.get("saga_type")
        window = {
            "since": query.validated_data.get("since") or analytics.default_since(until, now),
            "until": until,
            "saga_type": saga_type,
            "root": {"true": True, "false": False}.get(query.validated_data.get("root")),
        }
        window["since"] = analytics.capped_since(window["since"], until, now, settings.SAGAS_ANALYTICS_MAX_WINDOW)
        readable = access.readable_types(request.user)  # None: every type
        counted = {**window, "saga_type": saga_type if readable is None
                   else [t for t in readable if saga_type in (None, t)]}
        return Response(AnalyticsOutputSerializer({
            "window": window,
            "overall": analytics.overall_stats(**counted).as_dict(),
            "saga_types": [s.as_dict() for s in analytics.saga_type_stats(**counted)],
            "steps": [s.as_dict() for s in analytics.step_stats(**counted)],
        }).data)
