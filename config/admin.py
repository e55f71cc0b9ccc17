"""The project's admin site: named for the orchestrator, with the sagas before the workflows built on them.

Installed through ``config.apps.OrchestratorAdminConfig`` (Django's way to
replace the default site), so ``admin.site`` and every ``admin.register``
keep working unchanged.
"""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

# Apps listed first, in this order, on the admin's index and in its sidebar; the rest stay alphabetical.
FIRST_APPS = ("sagas",)


class OrchestratorAdminSite(admin.AdminSite):
    site_header = "Saga orchestrator"
    site_title = "Saga orchestrator"
    index_title = "Sagas, and the workflows built on them"

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = super().get_app_list(request, app_label)
        rank = {label: i for i, label in enumerate(FIRST_APPS)}
        return sorted(apps, key=lambda app: rank.get(app["app_label"], len(rank)))  # stable: ties keep their order
