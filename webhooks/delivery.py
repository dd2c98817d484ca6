"""Recording, sending and retrying webhooks. Sent by the workers only, never in a request.

A job's end records its message (``webhook_message_record``) in the transaction that ends it
when it can, and queues a django-q2 task with the message id once that commits. The task makes
one attempt: a conditional UPDATE claims it (so duplicate tasks, or a task and the sweep, never
send twice at once), the POST goes out with a ``WEBHOOK_TIMEOUT``, and the attempt is stored.
A failed attempt (network error, non-2xx) sets ``next_attempt_at`` after an exponential backoff;
the recovery sweep of every worker queues messages that are due. Delivery is at least once: a
worker that dies mid-attempt leaves ``next_attempt_at`` at the end of its lease, and the sweep
picks the message up again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from project.shared_broker import forget_broker, shared_broker
from project.telemetry import webhook_attempted
from webhooks.destinations import WebhookUrlInvalid, webhook_url_check
from webhooks.models import WebhookAttempt, WebhookMessage, WebhookSource, WebhookStatus
from webhooks.signing import webhook_headers

logger = logging.getLogger(__name__)

# An attempt not recorded this long after it started was lost with its worker: due again.
_LEASE_MARGIN = 60.0


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (datetimes, UUIDs and decimals as Django's encoder writes
    them), as a response body would carry it."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _enqueue(message_id: UUID | str) -> None:
    try:
        async_task(
            "webhooks.tasks.deliver", str(message_id), task_name=f"webhook-{message_id}",
            broker=shared_broker(),
        )
    except Exception:  # the sweep sends it once it is due; a webhook never fails its job
        forget_broker()
        logger.warning("could not queue webhook %s; the sweep will", message_id, exc_info=True)


def webhook_message_record(
    *, source: str, source_id: UUID | str, url: str, event_type: str, payload: dict,
    allow_loopback: bool = False,
) -> WebhookMessage | None:
    """Record the webhook of a job that ended, and queue its first attempt when the caller's
    transaction commits. A job has one message: a second call for it (the worker and a cancel
    both saw the end) changes nothing and returns None."""
    if source not in WebhookSource.values:
        raise ValueError(f"unknown webhook source {source!r}")
    try:
        with transaction.atomic():
            message = WebhookMessage.objects.create(
                source=source, source_id=source_id, url=url, event_type=event_type,
                payload=jsonable(payload), allow_loopback=allow_loopback,
                max_attempts=max(1, settings.WEBHOOK_MAX_ATTEMPTS), next_attempt_at=timezone.now(),
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: _enqueue(message.pk))
    return message


def retry_delay(*, attempt: int) -> float:
    """Seconds after failed attempt number ``attempt`` before the next: exponential."""
    return settings.WEBHOOK_RETRY_BACKOFF * 2 ** max(0, attempt - 1)


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str
    response: str
    permanent: bool = False  # retrying cannot help (the URL is refused)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _claim(message_id: UUID | str) -> WebhookMessage | None:
    """The message, with this call's attempt counted, if it is pending and due; else None."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT + _LEASE_MARGIN)
    claimed = WebhookMessage.objects.filter(
        pk=message_id, status=WebhookStatus.PENDING, next_attempt_at__lte=now
    ).update(attempts=F("attempts") + 1, next_attempt_at=lease)
    if not claimed:
        return None
    return WebhookMessage.objects.filter(pk=message_id).first()


def _body(message: WebhookMessage, at_iso: str) -> bytes:
    payload = message.payload
    if isinstance(payload, dict) and "webhook_sent_at" in payload:
        # The Agent Server's run webhook says when it was sent: this attempt's time.
        payload = {**payload, "webhook_sent_at": at_iso}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _post(message: WebhookMessage) -> AttemptResult:
    try:
        webhook_url_check(message.url, allow_loopback=message.allow_loopback)
    except WebhookUrlInvalid as exc:
        return AttemptResult(None, str(exc), "", permanent=True)
    at = timezone.now()
    body = _body(message, at.isoformat())
    headers = webhook_headers(webhook_id=message.webhook_id, at=at, body=body)
    limit = max(0, settings.WEBHOOK_RESPONSE_PREFIX)
    try:
        with _client().stream(
            "POST", message.url, content=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT
        ) as response:
            # Only the start of the body is read: a receiver answering gigabytes costs nothing.
            start = b""
            for chunk in response.iter_bytes():
                start += chunk
                if len(start) >= limit * 4:  # enough bytes for ``limit`` characters of UTF-8
                    break
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, "")
    prefix = start.decode(response.encoding or "utf-8", errors="replace")[:limit]
    error = "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return AttemptResult(response.status_code, error, prefix)


_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client() -> httpx.Client:
    """This process's client, shared by its sender threads (httpx clients are thread-safe): a
    new one per attempt cost ~50-100 ms of building its TLS context before the first byte."""
    client = _clients.get(os.getpid())
    if client is None:
        with _clients_lock:
            client = _clients.get(os.getpid())
            if client is None:
                # trust_env off: no proxy from the environment; the checked address is the one
                # called. No redirects either: one could lead to an address the check refuses.
                client = _clients[os.getpid()] = httpx.Client(
                    trust_env=False, follow_redirects=False
                )
    return client


def webhook_deliver(*, message_id: UUID | str) -> str:
    """Make one attempt at ``message_id`` if it is due. Returns what happened, for logs and
    tests: ``delivered``, ``retrying``, ``failed`` or ``skipped`` (not due or not pending)."""
    message = _claim(message_id)
    if message is None:
        return "skipped"
    started = timezone.now()
    clock = time.monotonic()
    result = _post(message)
    duration_ms = (time.monotonic() - clock) * 1000
    number = message.attempts
    now = timezone.now()
    if result.ok:
        fields: dict[str, Any] = {
            "status": WebhookStatus.DELIVERED, "delivered_at": now, "next_attempt_at": None
        }
        outcome = "delivered"
    elif result.permanent or number >= message.max_attempts:
        fields = {"status": WebhookStatus.FAILED, "next_attempt_at": None}
        outcome = "failed"
    else:
        fields = {"next_attempt_at": now + timedelta(seconds=retry_delay(attempt=number))}
        outcome = "retrying"
    with transaction.atomic():
        WebhookAttempt.objects.create(
            message=message, number=number, started_at=started, duration_ms=round(duration_ms, 1),
            status_code=result.status_code, error=result.error[:2000], response=result.response,
        )
        # Only the claim that counted this attempt ends it: after a lost lease a newer one owns it.
        WebhookMessage.objects.filter(
            pk=message.pk, status=WebhookStatus.PENDING, attempts=number
        ).update(**fields)
    webhook_attempted(outcome=outcome)
    if outcome != "delivered":
        logger.info("webhook %s attempt %d: %s", message.pk, number, result.error)
    return outcome


def webhook_messages_enqueue_due(*, limit: int = 500) -> int:
    """Queue the pending messages whose next attempt is due (a retry's backoff passed, or an
    attempt or queue message was lost). A duplicate task loses the claim and sends nothing."""
    due = list(
        WebhookMessage.objects.filter(
            status=WebhookStatus.PENDING, next_attempt_at__lte=timezone.now()
        ).values_list("pk", flat=True)[:limit]
    )
    for message_id in due:
        _enqueue(message_id)
    return len(due)


def webhook_redeliver(*, message: WebhookMessage) -> WebhookMessage:
    """Send a message again (delivered, failed or pending), with a fresh round of attempts."""
    with transaction.atomic():
        WebhookMessage.objects.filter(pk=message.pk).update(
            status=WebhookStatus.PENDING, next_attempt_at=timezone.now(),
            max_attempts=F("attempts") + max(1, settings.WEBHOOK_MAX_ATTEMPTS),
        )
        transaction.on_commit(lambda: _enqueue(message.pk))
    message.refresh_from_db()
    return message
