"""Live progress of many executions over ONE server-sent events stream, for the admin pages.

A changelist may show dozens of active executions; browsers open at most ~6 HTTP/1.1 connections
per origin, so one ``EventSource`` per row would stall the page. The admin opens this multiplexed
stream instead: it watches every execution's event channel (``executions.streams``), sends a
``snapshot`` event (the admin's progress snapshot) for each execution at once and again whenever
that execution's events move, a ``gone`` event for an id that does not exist (any more), and ends
once none of the executions is active.

Snapshots carry no SSE id: a reconnecting page asks again and gets fresh snapshots of everything.
Staff only, and one of the user's open streams (``project.realtime.sse``), like the API's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from executions.models import ExecutionStatus
from executions.streams import execution_channel
from project.api.errors import BadRequest
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

SnapshotReader = Callable[[list[str]], list[dict[str, Any]]]
IdsParser = Callable[[str], list[UUID]]

# The refusals of the admin's progress endpoints (this stream and the polling JSON).
USE_GET = "Use GET."
MAY_NOT_VIEW = "You may not view executions."

# How often everything followed is read again even without a wake-up: keeps running durations
# current, and bounds the delay of a wake-up the event hub missed.
REFRESH_INTERVAL = HEARTBEAT_INTERVAL


class _Wakeups:
    """The wake-ups of many channels folded into one awaitable that remembers who rang."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._rung: set[str] = set()

    def ring(self, channel: str) -> None:
        self._rung.add(channel)
        self._event.set()

    def arm(self) -> set[str]:
        """The channels rung since the last call; call before reading the database."""
        rung, self._rung = self._rung, set()
        self._event.clear()
        return rung

    async def wait(self, timeout: float) -> bool:
        return await wait_event(self._event, timeout)


class _ChannelWatcher(Watcher):
    """A hub watcher that rings a shared ``_Wakeups`` instead of its own event."""

    def __init__(self, channel: str, wakeups: _Wakeups) -> None:
        super().__init__(channel)
        self._wakeups = wakeups

    def wake(self) -> None:
        self._wakeups.ring(self.channel)


async def progress_events(ids: list[UUID], *, snapshots: SnapshotReader) -> AsyncIterator[bytes]:
    """SSE frames following ``ids`` until none is active; ``snapshots(ids)`` reads them (sync)."""
    interval, refresh = HEARTBEAT_INTERVAL, REFRESH_INTERVAL
    wakeups = _Wakeups()
    current_hub = hub()
    watchers: dict[str, _ChannelWatcher] = {}
    id_of_channel: dict[str, str] = {}
    for execution_id in map(str, ids):
        channel = execution_channel(execution_id)
        id_of_channel[channel] = execution_id
        watchers[execution_id] = _ChannelWatcher(channel, wakeups)
        current_hub.add(watchers[execution_id])

    def unwatch(execution_id: str) -> None:
        watcher = watchers.pop(execution_id, None)
        if watcher is not None:
            current_hub.remove(watcher)

    read = sync_to_async(snapshots)
    sent_seq: dict[str, int] = {}
    try:
        wakeups.arm()
        to_read, read_all = list(watchers), True
        last_write = last_full_read = time.monotonic()
        while True:
            if to_read:
                found = {snapshot["id"]: snapshot for snapshot in await read(to_read)}
                for execution_id in to_read:
                    snapshot = found.get(execution_id)
                    if snapshot is None:  # never existed, or pruned while followed
                        yield sse_event("gone", {"id": execution_id})
                        last_write = time.monotonic()
                        unwatch(execution_id)
                        continue
                    # A full read re-sends running rows even when unchanged: their duration grew.
                    grew = read_all and snapshot["status"] == ExecutionStatus.RUNNING
                    if snapshot["seq"] != sent_seq.get(execution_id) or grew:
                        yield sse_event("snapshot", snapshot)
                        last_write = time.monotonic()
                        sent_seq[execution_id] = snapshot["seq"]
                    if not snapshot["active"]:
                        unwatch(execution_id)
                if read_all:
                    last_full_read = time.monotonic()
            if not watchers:
                return  # nothing followed is active any more
            now = time.monotonic()
            if now - last_write >= interval:
                yield HEARTBEAT
                last_write = now
            deadline = min(last_write + interval, last_full_read + refresh)
            await wakeups.wait(max(0.0, deadline - time.monotonic()))
            rung = {id_of_channel[channel] for channel in wakeups.arm()}
            read_all = time.monotonic() - last_full_read >= refresh
            to_read = list(watchers) if read_all else [i for i in watchers if i in rung]
    finally:
        # Also on disconnect (CancelledError): the hub must not keep waking a closed stream.
        for execution_id in list(watchers):
            unwatch(execution_id)


@event_stream_view(method_not_allowed=USE_GET)
async def progress_stream(
    request: HttpRequest,
    *,
    may_view: Callable[[HttpRequest], bool],
    parse_ids: IdsParser,
    snapshots: SnapshotReader,
) -> HttpResponseBase:
    """``GET progress/stream/?ids=a,b``: ``may_view(request)`` is the admin's view permission,
    ``parse_ids`` turns ``?ids=`` into ids (``ValueError`` with a message for staff)."""
    user = await staff_stream_user(request, may_view=may_view, refusal=MAY_NOT_VIEW)
    try:
        ids = parse_ids(request.GET.get("ids", ""))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

    async def start() -> HttpResponseBase:
        return EventStreamResponse(progress_events(ids, snapshots=snapshots))

    return await stream_open(user, start)
