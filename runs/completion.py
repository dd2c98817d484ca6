"""What a run's end sends: its webhook (``kwargs.webhook``), with the body the Agent Server
sends (langgraph-behaviour.md §2.9): the run object with its final status, ``run_started_at``,
``run_ended_at``, the thread's final ``values`` (null once a stateless run's thread is
deleted), ``webhook_sent_at`` (the attempt's time, set by the delivery) and, for a failed run,
``error: {"error", "message"}``.

Called in the transaction that ends the run (the worker, the reaper, a cancel of a pending run),
only for runs that have a webhook; the message commits with the run's end.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from runs.errors import Unprocessable
from runs.graphs import webhook_url_config
from runs.jsonable import to_json
from runs.models import Run, RunStatus, Thread
from runs.serializers import iso, run_json
from webhooks.delivery import webhook_message_record
from webhooks.destinations import WebhookUrlInvalid, webhook_url_check
from webhooks.models import WebhookSource

logger = logging.getLogger(__name__)

# ``values`` not given: the thread's, as stored now.
THREAD_VALUES: Any = object()


def _allow_loopback() -> bool:
    # As on the Agent Server: loopback webhooks only if langgraph.json says
    # "webhooks": {"url": {"disable_loopback": false}}.
    return webhook_url_config().get("disable_loopback") is False


def run_webhook_check(url: Any) -> str:
    """A run create's ``webhook``, or a 422 saying why it cannot be one."""
    config = webhook_url_config()
    if config.get("require_https") and isinstance(url, str) and not url.startswith("https://"):
        raise Unprocessable("Webhook URL must use https (langgraph.json webhooks.url.require_https).")
    try:
        return webhook_url_check(url, allow_loopback=_allow_loopback())
    except WebhookUrlInvalid as exc:
        raise Unprocessable(str(exc)) from None


def run_webhook_payload(*, run: Run, values: Any) -> dict[str, Any]:
    body = run_json(run)
    body.update(
        {
            "run_started_at": iso(run.started_at),
            "run_ended_at": iso(run.ended_at),
            "values": to_json(values),
            "webhook_sent_at": None,
        }
    )
    if run.status in (RunStatus.ERROR, RunStatus.TIMEOUT) and run.error:
        body["error"] = run.error
    return body


def run_ended_notify(*, run_id: UUID | str, values: Any = THREAD_VALUES) -> None:
    """Record the webhook of a run that ended, if it has one; in the caller's transaction.
    Never raises: a webhook must not fail the run's end."""
    try:
        run = Run.objects.filter(pk=run_id, status__in=RunStatus.terminal()).first()
        url = (run.kwargs or {}).get("webhook") if run is not None else None
        if run is None or not url:
            return
        if values is THREAD_VALUES:
            values = Thread.objects.filter(pk=run.thread_id).values_list("values", flat=True).first()
        webhook_message_record(
            source=WebhookSource.RUN, source_id=run.pk, url=url, event_type=f"run.{run.status}",
            payload=run_webhook_payload(run=run, values=values), allow_loopback=_allow_loopback(),
        )
    except Exception:
        logger.exception("could not record the webhook of run %s", run_id)
