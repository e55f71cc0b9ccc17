from django.apps import AppConfig


class SagasConfig(AppConfig):
    name = "sagas"
    verbose_name = "Sagas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Like admin.py: every installed app's sagas.py registers its definitions.
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules("sagas")
        from . import checks  # noqa: F401  (registers the system checks)
        from . import redaction

        redaction.install()  # signal tokens never reach an access log
