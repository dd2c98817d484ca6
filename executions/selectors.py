"""Reads shared by the API, the admin and the management commands."""

from django.db.models import Prefetch

from executions.models import Execution, ExecutionDependency, ExecutionEvent, ExecutionQuerySet
from executions.registry import registry


def executions_visible_to(user) -> ExecutionQuerySet:
    """A user's own executions: the API never shows anybody else's, staff included (with their
    dependencies and those dependencies' statuses, one query for a whole page)."""
    return Execution.objects.owned_by(user).prefetch_related(
        Prefetch(
            "upstream_links",
            queryset=ExecutionDependency.objects.select_related("upstream")
            .only("id", "downstream_id", "upstream_id", "upstream__status")
            .order_by("id"),
        )
    )


def execution_events(execution: Execution, *, after_seq: int = 0):
    return ExecutionEvent.objects.filter(execution=execution, seq__gt=after_seq).order_by("seq")


def targets_described() -> list[dict]:
    return [
        {
            "id": target.id,
            "type": target.type,
            "description": target.description,
            "steps": target.describe_steps() if target.type == "pipeline" else None,
            "inputs": target.describe_inputs(),
            "concurrency": target.concurrency,
            "retry": target.retry.describe(),
        }
        for target in registry.all()
    ]
