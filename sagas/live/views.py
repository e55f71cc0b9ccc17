"""The live page in the admin's look; its figures come once with the page, then over the WebSocket."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .. import access
from .snapshot import build_snapshot


def live_page(request: HttpRequest) -> HttpResponse:
    """``/admin/sagas/live/``: staff (``admin.site.admin_view`` in the URLconf) who may read sagas; the
    types they may not read are left out."""
    if not access.may(request.user, "view"):
        raise PermissionDenied("the live page needs the permission sagas.view_sagainstance")
    context = {
        **admin.site.each_context(request),
        "title": "Sagas, live",
        "snapshot": build_snapshot(tuple(access.forbidden_types(request.user))),
        "ws_path": "/ws/sagas/live/",
    }
    return TemplateResponse(request, "admin/sagas/live.html", context)
