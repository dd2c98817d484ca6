"""Standard Webhooks headers (https://www.standardwebhooks.com), signed with the reference
library ``standardwebhooks``: ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from standardwebhooks import Webhook


def webhook_headers(*, webhook_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The headers of one attempt; unsigned (no ``webhook-signature``) when ``WEBHOOK_SECRET``
    is empty. The timestamp is the attempt's, so a receiver's replay window holds for retries."""
    headers = {
        "content-type": "application/json",
        "user-agent": "agent-jobs-webhooks/1",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
    }
    if settings.WEBHOOK_SECRET:
        headers["webhook-signature"] = Webhook(settings.WEBHOOK_SECRET).sign(webhook_id, at, body)
    return headers
