"""What an execution's end sends: its webhook, ``{"type", "timestamp", "data"}`` with ``data``
the execution as ``GET /api/v1/executions/{id}`` returns it at that moment.

Called after each terminal transition by whoever made it (the worker, a cancel, recovery) for an
execution that has a webhook; the message is recorded once however many of them call.
"""

from __future__ import annotations

import logging
from uuid import UUID

from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from webhooks.delivery import webhook_message_record
from webhooks.models import WebhookSource

logger = logging.getLogger(__name__)

EVENT_TYPES: dict[str, str] = {
    ExecutionStatus.COMPLETED: "execution.completed",
    ExecutionStatus.FAILED: "execution.failed",
    ExecutionStatus.CANCELLED: "execution.cancelled",
}


def execution_webhook_payload(*, execution: Execution) -> dict:
    from executions.serializers import ExecutionSerializer

    # No request in a worker: status_url is the path, as the API would give it unproxied.
    data = ExecutionSerializer(execution, context={"request": None}).data
    return {
        "type": EVENT_TYPES[execution.status],
        # When it ended, written as data writes it.
        "timestamp": data["completed_at"] or data["cancelled_at"] or timezone.now().isoformat(),
        "data": data,
    }


def execution_ended_notify(*, execution_id: UUID | str) -> None:
    """Record the webhook of an execution that ended, if it has one. Never raises: a webhook
    must not fail or delay the job it reports on."""
    try:
        execution = Execution.objects.filter(
            pk=execution_id, status__in=ExecutionStatus.terminal()
        ).exclude(webhook="").first()
        if execution is None:
            return
        webhook_message_record(
            source=WebhookSource.EXECUTION, source_id=execution.pk, url=execution.webhook,
            event_type=EVENT_TYPES[execution.status],
            payload=execution_webhook_payload(execution=execution),
        )
    except Exception:
        logger.exception("could not record the webhook of execution %s", execution_id)
