from django.apps import AppConfig


class CorporateConfig(AppConfig):
    name = "corporate"
    verbose_name = "Corporate workflows"
    default_auto_field = "django.db.models.BigAutoField"
