from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    name = "schedules"
    verbose_name = "Schedules"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from executions.recovery import register_sweep
        from schedules.firing import schedules_sweep

        # Every worker's sweeper fires the due schedules (the conditional UPDATE of next_run_at
        # lets one of them win each fire time) and sets a timer for the next one when it is near.
        register_sweep(schedules_sweep)
