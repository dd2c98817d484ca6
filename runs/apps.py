from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _create_system_assistants(sender: AppConfig, **kwargs: object) -> None:
    from runs.graphs import system_assistants_ensure

    system_assistants_ensure()


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        post_migrate.connect(_create_system_assistants, sender=self, dispatch_uid="runs-system-assistants")

        from executions.recovery import register_sweep
        from runs.recovery import sweep

        register_sweep(sweep)
