"""The admin app with the project's own site (``config.admin.OrchestratorAdminSite``) as ``admin.site``."""
from django.contrib.admin.apps import AdminConfig


class OrchestratorAdminConfig(AdminConfig):
    default_site = "config.admin.OrchestratorAdminSite"
