"""The live page in the admin's look; its figures come once with the page, then over the WebSocket."""
from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .snapshot import build_snapshot


def live_page(request: HttpRequest) -> HttpResponse:
    """``/admin/sagas/live/``: staff only (wrapped by ``admin.site.admin_view`` in the URLconf)."""
    context = {
        **admin.site.each_context(request),
        "title": "Sagas, live",
        "snapshot": build_snapshot(),
        "ws_path": "/ws/sagas/live/",
    }
    return TemplateResponse(request, "admin/sagas/live.html", context)
