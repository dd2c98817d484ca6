"""Reads of webhook messages."""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from webhooks.models import WebhookMessage


def webhook_messages_of(*, source: str, source_id: UUID | str) -> QuerySet[WebhookMessage]:
    """The messages a job sent (at most one today), with their attempts in one more query."""
    return WebhookMessage.objects.filter(source=source, source_id=source_id).prefetch_related(
        "deliveries"
    )
