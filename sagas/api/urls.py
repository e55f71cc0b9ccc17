"""Routes of the saga API; ``config.urls`` mounts them under ``/api/``."""
from django.urls import path

from . import bulk, views

app_name = "sagas_api"

urlpatterns = [
    path("", views.ApiRootApi.as_view(), name="root"),
    path("auth/token/", views.AuthTokenApi.as_view(), name="auth-token"),
    path("analytics/", views.AnalyticsApi.as_view(), name="analytics"),
    path("saga-types/", views.SagaTypeListApi.as_view(), name="saga-type-list"),
    path("sagas/", views.SagaListCreateApi.as_view(), name="saga-list"),
    # <str:>, not <uuid:>: a malformed id answers the API's JSON 404, not Django's HTML one.
    path("sagas/<str:saga_id>/", views.SagaDetailApi.as_view(), name="saga-detail"),
    path("sagas/<str:saga_id>/events/", views.SagaEventListApi.as_view(), name="saga-events"),
    path("sagas/<str:saga_id>/tree/", views.SagaTreeApi.as_view(), name="saga-tree"),
    path("sagas/<str:saga_id>/resubmit/", views.SagaResubmitApi.as_view(), name="saga-resubmit"),
    path("sagas/<str:saga_id>/cancel/", views.SagaCancelApi.as_view(), name="saga-cancel"),
    path("sagas/<str:saga_id>/pause/", views.SagaPauseApi.as_view(), name="saga-pause"),
    path("sagas/<str:saga_id>/resume/", views.SagaResumeApi.as_view(), name="saga-resume"),
    path("sagas/<str:saga_id>/steps/<str:step>/skip/", views.StepSkipApi.as_view(), name="step-skip"),
    path("sagas/<str:saga_id>/retry-compensation/", views.SagaRetryCompensationApi.as_view(),
         name="saga-retry-compensation"),
    path("waiting-steps/", views.WaitingStepListApi.as_view(), name="waiting-step-list"),
    path("sagas/<str:saga_id>/steps/<str:step>/complete/", views.StepCompleteApi.as_view(), name="step-complete"),
    path("sagas/<str:saga_id>/steps/<str:step>/fail/", views.StepFailApi.as_view(), name="step-fail"),
    path("signals/<str:token>/complete/", views.SignalCompleteApi.as_view(), name="signal-complete"),
    path("signals/<str:token>/fail/", views.SignalFailApi.as_view(), name="signal-fail"),
    path("bulk-actions/", bulk.BulkActionCreateApi.as_view(), name="bulk-action-list"),
    path("bulk-actions/<str:bulk_action_id>/", bulk.BulkActionDetailApi.as_view(), name="bulk-action-detail"),
]
