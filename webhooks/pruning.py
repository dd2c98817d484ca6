"""Deleting old webhook messages: the table grows by one message per finished job with a
webhook, and each keeps a row per attempt."""

from __future__ import annotations

from datetime import datetime

from webhooks.models import WebhookMessage, WebhookStatus


def webhook_messages_prune(*, older_than: datetime, dry_run: bool = False) -> int:
    """Delete the delivered and failed messages (with their attempts) created before
    ``older_than``; returns how many messages. Pending ones, still being delivered, stay."""
    queryset = WebhookMessage.objects.filter(
        status__in=(WebhookStatus.DELIVERED, WebhookStatus.FAILED), created_at__lt=older_than
    )
    count = queryset.count()
    if not dry_run and count:
        queryset.delete()
    return count
