from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Executions"

    def ready(self) -> None:
        from executions import builtins  # noqa: F401  the demo targets that ship with the platform

        # Like admin.py: every installed app may register targets in an agents.py module.
        autodiscover_modules("agents")

        from django_q.signals import post_spawn

        from executions.recovery import start_sweeper

        post_spawn.connect(start_sweeper, dispatch_uid="executions-sweeper")

        from executions.recovery import register_sweep
        from webhooks.delivery import webhook_messages_enqueue_due

        # Webhook retries whose backoff passed, and messages whose task or worker was lost.
        register_sweep(webhook_messages_enqueue_due)

        from executions.retention import executions_prune_expired

        # EXECUTIONS_RETENTION_DAYS: old finished executions deleted a few batches at a time.
        register_sweep(executions_prune_expired)
