"""The project's own pages: ``/``, the landing page that leads to every other one."""
from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port
from django.template.response import TemplateResponse
from django.urls import reverse

FLOWER_PORT = 5555  # where make run and the compose file serve Flower


def flower_url(request: HttpRequest) -> str:
    """``SAGAS_FLOWER_URL``, or Flower's port on the host this page was asked for."""
    if settings.SAGAS_FLOWER_URL:
        return settings.SAGAS_FLOWER_URL
    host, _ = split_domain_port(request.get_host())
    return f"{request.scheme}://{host}:{FLOWER_PORT}/"


def landing_page(request: HttpRequest) -> HttpResponse:
    """``/``: what each page is for and who may open it (the admin's "View site" leads here)."""
    links = [
        ("Admin", reverse("admin:index"), "sagas, their steps and events; resubmit, cancel, retry "
                                          "compensation, signal a waiting step (staff)"),
        ("Live page", reverse("sagas-live"), "sagas in flight, waiting steps, failures and counts by status, "
                                             "pushed as they change (staff)"),
        ("REST API", reverse("sagas_api:root"), "every endpoint, for a token or a signed-in user"),
        ("API docs", reverse("api-docs"), f"OpenAPI 3, browsable (the schema: {reverse('api-schema')})"),
        ("API token", reverse("sagas_api:auth-token"), "POST a username and password, get the user's token"),
        ("Flower", flower_url(request), "Celery's workers and tasks (its own port and password)"),
        ("Metrics", reverse("metrics"), "Prometheus text: a scraper's token, or a user who may read sagas"),
    ]
    if settings.SAGAS_DOCS_URL:
        links.append(("Docs", settings.SAGAS_DOCS_URL, "the guide"))
    context = {**admin.site.each_context(request), "title": "Start here", "links": links,
               "docs_url": settings.SAGAS_DOCS_URL}
    return TemplateResponse(request, "landing.html", context)
