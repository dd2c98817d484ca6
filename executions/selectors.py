"""Reads shared by the API, the admin and the management commands."""

from executions.models import Execution, ExecutionEvent, ExecutionQuerySet
from executions.registry import registry


def executions_visible_to(user) -> ExecutionQuerySet:
    """A user's own executions: the API never shows anybody else's, staff included."""
    return Execution.objects.owned_by(user)


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
