"""Live status of the runs an admin page shows, over ONE server-sent events stream.

A changelist may show dozens of active runs; one EventSource per row would exhaust the browser's
~6 connections per origin, so ``static/runs/admin_status.js`` opens this stream for all of them.
It sends a ``status`` event per run at once and whenever that run's channel wakes (a claim, an
event, its end), ``gone`` for a run that does not exist (any more), re-sends running rows every
few seconds (their duration grows), and ends with ``done`` once none is active, so the page
closes its EventSource instead of letting the browser reconnect. Staff only, and one of the user's
open streams (``project.realtime.sse``), like the API's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

from django.http import HttpRequest
from django.http.response import HttpResponseBase

from project.api.errors import BadRequest
from project.db.async_db import in_executor
from project.durations import format_duration
from project.realtime.event_hub import Watcher, hub, wait_event
from project.realtime.sse import (
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    EventStreamResponse,
    event_stream_view,
    sse_event,
    staff_stream_user,
    stream_open,
)
from runs.models import Run, RunStatus
from runs.wakeups import run_channel

MAX_IDS = 200


def run_status_snapshot(run: Run) -> dict[str, Any]:
    """What the page shows of a run's progress; also the first paint of the admin columns."""
    return {
        "id": str(run.pk),
        "status": run.status,
        "active": run.status in RunStatus.active(),
        "duration": format_duration(run.duration_seconds),
    }


def run_status_snapshots(ids: list[str]) -> list[dict[str, Any]]:
    runs = Run.objects.filter(pk__in=ids).only("run_id", "status", "started_at", "ended_at")
    return [run_status_snapshot(run) for run in runs]


def parse_run_ids(raw: str) -> list[UUID]:
    """The ids of ``?ids=a,b``; ``ValueError`` with a message for staff when unusable."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not parts:
        raise ValueError("Pass the run ids as ?ids=<uuid>,<uuid>.")
    if len(parts) > MAX_IDS:
        raise ValueError(f"At most {MAX_IDS} ids per request.")
    try:
        return list(dict.fromkeys(UUID(part) for part in parts))
    except ValueError:
        raise ValueError("Not a run id among the ids.") from None


class _SharedWatcher(Watcher):
    """A hub watcher that rings one event shared by every run the stream follows."""

    def __init__(self, channel: str, rung: asyncio.Event) -> None:
        super().__init__(channel)
        self._rung = rung

    def wake(self) -> None:
        self._rung.set()


async def run_status_events(ids: list[UUID]) -> AsyncIterator[bytes]:
    rung = asyncio.Event()
    current_hub = hub()
    watchers = {str(run_id): _SharedWatcher(run_channel(run_id), rung) for run_id in ids}
    for watcher in watchers.values():
        current_hub.add(watcher)
    read = in_executor(run_status_snapshots)
    sent: dict[str, tuple[str, str]] = {}
    try:
        last_write = time.monotonic()
        while True:
            rung.clear()
            found = {snapshot["id"]: snapshot for snapshot in await read(list(watchers))}
            for run_id in list(watchers):
                snapshot = found.get(run_id)
                if snapshot is None:
                    yield sse_event("gone", {"id": run_id})
                elif (snapshot["status"], snapshot["duration"]) != sent.get(run_id):
                    yield sse_event("status", snapshot)
                    sent[run_id] = (snapshot["status"], snapshot["duration"])
                else:
                    continue
                last_write = time.monotonic()
                if snapshot is None or not snapshot["active"]:
                    current_hub.remove(watchers.pop(run_id))
            if not watchers:
                yield sse_event("done", {})
                return
            # Woken by a change, or after a heartbeat's time to refresh running durations.
            if not await wait_event(rung, HEARTBEAT_INTERVAL):
                if time.monotonic() - last_write >= HEARTBEAT_INTERVAL:
                    yield HEARTBEAT
                    last_write = time.monotonic()
    finally:
        # Also on disconnect: the hub must not keep waking a closed stream.
        for watcher in watchers.values():
            current_hub.remove(watcher)


@event_stream_view(method_not_allowed="Use GET.")
async def run_status_stream(
    request: HttpRequest, *, may_view: Callable[[HttpRequest], bool]
) -> HttpResponseBase:
    """``GET status/stream/?ids=a,b``; ``may_view(request)`` is the admin's view permission."""
    user = await staff_stream_user(request, may_view=may_view, refusal="You may not view runs.")
    try:
        ids = parse_run_ids(request.GET.get("ids", ""))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

    async def start() -> HttpResponseBase:
        return EventStreamResponse(run_status_events(ids))

    return await stream_open(user, start)
