"""SSE of an execution's events: `GET /api/v1/executions/{id}/events`.

Replays the stored events after ``Last-Event-ID`` (header, or ``?last_event_id=`` for the first
request of an EventSource), then follows new ones live until the execution is final and every
event stored by then was sent, with a heartbeat comment every 5 s. That is not always at the
terminal status event: an execution cancelled while running turns ``cancelled`` at once and its
worker records ``worker_stopped`` after, so a stream opened later replays both. Event ids are the
per-execution sequence numbers, so a reconnect resumes with no gap and no duplicate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from uuid import UUID

from django.http import HttpRequest
from django.http.response import HttpResponseBase

from executions.models import Execution, ExecutionEvent, ExecutionStatus
from project.api.errors import BadRequest, NotFound
from project.db.async_db import in_executor
from project.realtime.event_hub import channel_name, register_kind, watch
from project.realtime.sse import (
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    EventStreamResponse,
    event_stream_view,
    sse_event,
    stream_client,
    stream_open,
)

CHANNEL_KIND = "execution"


def _event_versions(ids: list[str]) -> dict[str, int]:
    return {str(pk): seq for pk, seq in Execution.objects.filter(pk__in=ids).values_list("pk", "event_seq")}


register_kind(CHANNEL_KIND, _event_versions)


def execution_channel(execution_id: UUID | str) -> str:
    return channel_name(CHANNEL_KIND, execution_id)


def _last_event_id(request: HttpRequest) -> int:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise BadRequest("Last-Event-ID must be an event sequence number.") from None


def _frame(event: ExecutionEvent) -> bytes:
    return sse_event(
        event.type,
        {**event.data, "seq": event.seq, "at": event.at.isoformat()},
        event_id=event.seq,
    )


def _state_and_new_events(
    execution_id: UUID, after_seq: int
) -> tuple[Mapping[str, Any] | None, list[ExecutionEvent]]:
    state = Execution.objects.filter(pk=execution_id).values("status", "event_seq").first()
    events = list(ExecutionEvent.objects.filter(execution_id=execution_id, seq__gt=after_seq).order_by("seq"))
    return state, events


_read_new = in_executor(_state_and_new_events)


async def _follow(execution_id: UUID, after_seq: int) -> AsyncIterator[bytes]:
    async with watch(execution_channel(execution_id)) as watcher:
        last_write = time.monotonic()
        while True:
            watcher.arm()
            state, events = await _read_new(execution_id, after_seq)
            if state is None:  # deleted (pruned) while followed
                return
            for event in events:
                yield _frame(event)
                last_write = time.monotonic()
                after_seq = event.seq
            # Not at the terminal status event: a running execution's worker records its stop
            # after it. The row's counter, read before the events, says which were stored.
            if state["status"] in ExecutionStatus.terminal() and after_seq >= state["event_seq"]:
                return
            # Wait for a wake-up; heartbeats in between, without touching the database.
            while not await watcher.wait(max(0.0, HEARTBEAT_INTERVAL - (time.monotonic() - last_write))):
                yield HEARTBEAT
                last_write = time.monotonic()


@event_stream_view()
async def execution_events(request: HttpRequest, pk: str) -> HttpResponseBase:
    client = await stream_client(request)
    after_seq = _last_event_id(request)
    try:
        execution_id = UUID(pk)
    except ValueError:
        raise NotFound() from None
    visible = Execution.objects.filter(pk=execution_id)
    # Staff following a page of the admin see every execution, as the admin does.
    if not (client.by_session and client.user.is_staff):
        visible = visible.filter(owner=client.user)
    if not await in_executor(visible.exists)():
        raise NotFound()

    async def start() -> HttpResponseBase:
        return EventStreamResponse(_follow(execution_id, after_seq))

    return await stream_open(client.user, start)
