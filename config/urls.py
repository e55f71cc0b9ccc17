from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from sagas.live.views import live_page
from sagas.metrics import metrics_view

from .views import landing_page

urlpatterns = [
    path("", landing_page, name="landing"),
    # Before the admin's own URLs: the live page lives under the sagas app's admin index.
    path("admin/sagas/live/", admin.site.admin_view(live_page), name="sagas-live"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/auth/", include("rest_framework.urls")),  # log in/out for the browsable API
    path("api/", include("sagas.api.urls")),
]
