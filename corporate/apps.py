from django.apps import AppConfig


class CorporateConfig(AppConfig):
    name = "corporate"
    verbose_name = "Corporate workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The rules saga_demo (or a person, in the admin) stores in the database
        # reach every worker through this run-time source.
        from sagas import failure_injection

        from .selectors import failure_injection_rules

        failure_injection.register_source(failure_injection_rules)
