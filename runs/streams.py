"""Server-sent events of runs and threads, byte-compatible with the LangGraph server.

- ``POST /threads/{t}/runs/stream`` and ``POST /runs/stream`` create a run and stream all of it.
- ``GET /threads/{t}/runs/{r}/stream`` joins a run: live events from now, or the stored ones after
  ``Last-Event-ID``; ``?stream_mode=`` filters, ``?cancel_on_disconnect=true`` cancels on hang-up.
- ``GET /threads/{t}/stream`` follows every run of a thread, open-ended, always with ids.

The worker stores every event (``runs.models.RunEvent``) before the run's final status, and wakes
readers through ``project.realtime.event_hub``; readers only ever read the table. A run stream ends once
the run is final (or gone) and every stored event was sent, so the SDK, which GETs the run after
a stream closes without ``end``, finds it finished and does not reconnect.

Event ids. The real server's ids are Redis stream ids (``1795422558487-0``) that it compares as
strings: events whose id is greater than ``Last-Event-ID`` are replayed, so ``0``, ``-1`` and
``-`` replay everything. Ours are the events' primary keys written as 19 zero-padded digits
(``0000000000000000042``): fixed width, so comparing them as strings and as numbers agree, and the
real server's ``0`` / ``-1`` / ``-`` still sort before every id. One id space serves run and
thread streams, since a thread's runs are written one after another (see ``RunEvent``).

Before the stream starts (``project.realtime.sse``, as for the executions' and the admin's streams): who
asks (API key, or a session with its CSRF check on POST), the user's cap of ``STREAMS_MAX_PER_USER``
open streams (the slot is given back when the response closes, however it ends), and for the two
creating endpoints the "create" throttle, ``Idempotency-Key`` and the cap on active runs like
every other create. Their refusals are JSON ``{"detail": ...}`` (``project.api.errors``).

Database use: every read runs in the shared executor and gives its connection back at once, so an
idle stream holds no connection (with PostgreSQL's pool, one open stream does not pin one of its
connections), and however many streams wake at once, the executor bounds the concurrent queries.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db.models import Max
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from project.api.errors import ErrorStyle
from project.booleans import parse_bool
from project.db.async_db import in_executor
from project.realtime.event_hub import watch
from project.realtime.sse import (
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    EventStreamResponse,
    event_stream_view,
    sse_event,
    stream_client,
    stream_create_throttle,
    stream_open,
)
from runs import services
from runs.errors import Unprocessable
from runs.models import DiscardedRun, Run, RunEvent, RunStatus, Thread
from runs.services.waiting import run_create_awaited, run_disconnect_handled
from runs.stream_modes import API_MODES, event_wanted
from runs.validation import parse_json_body
from runs.wakeups import run_channel, thread_channel

EVENT_ID_WIDTH = 19
# Events read per query; a long backlog is sent in slices of this many.
READ_BATCH = 500
THREAD_STREAM_MODES = ("lifecycle", "run_modes", "state_update")
RUN_NOT_FOUND = {"error": "HTTPException", "message": "404: Run not found"}


# --- framing and request options -------------------------------------------------------------------


def format_event_id(pk: int) -> str:
    return f"{pk:0{EVENT_ID_WIDTH}d}"


def parse_last_event_id(raw: str | None) -> int | None:
    """The event id to resume after, 0 for "from the start", None when the header is absent.

    ``-``, ``-1`` and ``0`` (the real server's ways of asking for everything) give 0.
    """
    if raw is None:
        return None
    value = raw.strip()
    if value == "-" or (value.startswith("-") and value[1:].isdigit()):
        return 0
    if value.isdigit() and len(value) <= EVENT_ID_WIDTH:
        return int(value)
    raise Unprocessable(f"Invalid Last-Event-ID: {value[:60]!r}. Expected an event id.")


def parse_stream_mode_filter(request: HttpRequest) -> frozenset[str] | None:
    """A join's ``?stream_mode=``: one mode or a JSON array; only the first parameter counts, as
    on the real server. Absent or empty (the SDK sends ``stream_mode=``) means every mode."""
    values = request.GET.getlist("stream_mode")
    raw = values[0].strip() if values else ""
    if not raw:
        return None
    modes: Any = raw
    if raw.startswith("["):
        try:
            modes = json.loads(raw)
        except ValueError:
            raise Unprocessable(f"Invalid stream_mode: {raw[:100]!r} is not a JSON array.") from None
    if isinstance(modes, str):
        modes = [modes]
    unknown = [m for m in modes if m not in API_MODES]
    if not isinstance(modes, list) or unknown or not modes:
        raise Unprocessable(f"Invalid stream_mode: {unknown or modes!r}. Expected some of {list(API_MODES)}")
    return frozenset(modes)


def parse_thread_stream_modes(request: HttpRequest) -> frozenset[str]:
    """``?stream_modes=`` (the server's name) or ``?stream_mode=`` (the SDK's), comma-separated or
    repeated; run_modes when absent."""
    values = request.GET.getlist("stream_modes") + request.GET.getlist("stream_mode")
    modes = [part.strip() for raw in values for part in raw.split(",") if part.strip()] or ["run_modes"]
    unknown = [m for m in modes if m not in THREAD_STREAM_MODES]
    if unknown:
        raise Unprocessable(f"Invalid stream_modes: {unknown}. Expected some of {list(THREAD_STREAM_MODES)}")
    return frozenset(modes)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event: str
    data: str

    def frame(self, *, with_id: bool) -> bytes:
        return sse_event(
            self.event,
            raw=self.data.encode(),
            event_id=format_event_id(self.id) if with_id else None,
        )


# --- database reads ------------------------------------------------------------------------------


def _run_status_and_events(run_id: UUID, after_id: int) -> tuple[str | None, list[StoredEvent]]:
    # Status first: if it is final, every event was committed before it and is read below.
    status = Run.objects.filter(pk=run_id).values_list("status", flat=True).first()
    rows = (
        RunEvent.objects.filter(run_id=run_id, id__gt=after_id, thread_only=False)
        .order_by("id")
        .values_list("id", "event", "data")[:READ_BATCH]
    )
    return status, [StoredEvent(*row) for row in rows]


def _thread_exists_and_events(thread_id: UUID, after_id: int) -> tuple[bool, list[StoredEvent]]:
    exists = Thread.objects.filter(pk=thread_id).exists()
    rows = (
        RunEvent.objects.filter(run__thread_id=thread_id, id__gt=after_id)
        .order_by("id")
        .values_list("id", "event", "data")[:READ_BATCH]
    )
    return exists, [StoredEvent(*row) for row in rows]


def _last_run_event_id(run_id: UUID) -> int:
    return RunEvent.objects.filter(run_id=run_id).aggregate(m=Max("id"))["m"] or 0


def _last_thread_event_id(thread_id: UUID) -> int:
    return RunEvent.objects.filter(run__thread_id=thread_id).aggregate(m=Max("id"))["m"] or 0


# --- followers -----------------------------------------------------------------------------------


async def heartbeats_until_woken(watcher, last_write: float) -> AsyncIterator[bytes]:
    """A heartbeat after every 5 s of silence until the hub says there may be something new.

    Silence alone is no reason to read the database again: the hub wakes the watcher on every new
    event and when the job disappears (its version changes), so 1,000 idle streams cost no reads.
    """
    while not await watcher.wait(max(0.0, HEARTBEAT_INTERVAL - (time.monotonic() - last_write))):
        if time.monotonic() - last_write >= HEARTBEAT_INTERVAL:
            yield HEARTBEAT
            last_write = time.monotonic()


async def follow_run(
    run_id: UUID, after_id: int, *, modes: frozenset[str] | None = None, with_ids: bool = False
) -> AsyncGenerator[bytes]:
    """Frames of the run's events after ``after_id`` until the run is final or gone, with a
    heartbeat comment after every 5 s of silence."""
    read = in_executor(_run_status_and_events)
    async with watch(run_channel(run_id)) as watcher:
        last_write = time.monotonic()
        while True:
            watcher.arm()
            status, events = await read(run_id, after_id)
            for event in events:
                after_id = event.id
                if event_wanted(event.event, modes):
                    yield event.frame(with_id=with_ids)
                    last_write = time.monotonic()
            if len(events) == READ_BATCH:
                continue
            if status is None or status in RunStatus.terminal():
                return
            async for heartbeat in heartbeats_until_woken(watcher, last_write):
                yield heartbeat
                last_write = time.monotonic()


def _thread_event_wanted(event: StoredEvent, modes: frozenset[str]) -> bool:
    if "run_modes" in modes:
        return True
    # lifecycle: each run's start (metadata {run_id, attempt}) and end (metadata run_done).
    # state_update has no source yet: state updates are not stored as events.
    return "lifecycle" in modes and event.event == "metadata"


async def follow_thread(thread_id: UUID, after_id: int, *, modes: frozenset[str]) -> AsyncIterator[bytes]:
    """Frames (always with ids) of every run of the thread after ``after_id``, until the thread is
    deleted or the client leaves."""
    read = in_executor(_thread_exists_and_events)
    async with watch(thread_channel(thread_id)) as watcher:
        last_write = time.monotonic()
        while True:
            watcher.arm()
            exists, events = await read(thread_id, after_id)
            for event in events:
                after_id = event.id
                if _thread_event_wanted(event, modes):
                    yield event.frame(with_id=True)
                    last_write = time.monotonic()
            if len(events) == READ_BATCH:
                continue
            if not exists:
                return
            async for heartbeat in heartbeats_until_woken(watcher, last_write):
                yield heartbeat
                last_write = time.monotonic()


async def run_stream_body(
    run_id: UUID,
    after_id: int,
    *,
    modes: frozenset[str] | None = None,
    with_ids: bool = False,
    cancel_on_disconnect: bool = False,
    temporary_thread_id: UUID | None = None,
) -> AsyncIterator[bytes]:
    """``follow_run`` plus what the end of the response, or a client hanging up, means for the
    run (``runs.services.waiting.run_disconnect_handled``)."""
    async with (
        run_disconnect_handled(
            run_id=run_id, cancel=cancel_on_disconnect, temporary_thread_id=temporary_thread_id
        ),
        aclosing(follow_run(run_id, after_id, modes=modes, with_ids=with_ids)) as frames,
    ):
        async for frame in frames:
            yield frame
    if temporary_thread_id is not None:
        await in_executor(services.temporary_thread_discard)(thread_id=temporary_thread_id)


async def single_event_body(event: str, data: Any) -> AsyncIterator[bytes]:
    yield sse_event(event, data)


# --- views ---------------------------------------------------------------------------------------


def _run_stream_response(
    stream: AsyncIterator[bytes], *, location: str | None, content_location: str | None
) -> EventStreamResponse:
    response = EventStreamResponse(stream)
    if location:
        response["Location"] = location
    if content_location:
        response["Content-Location"] = content_location
    return response


async def _create_and_stream(request: HttpRequest, thread_id: str | None) -> HttpResponseBase:
    user = (await stream_client(request, unsafe=True)).user
    stateless = thread_id is None
    await stream_create_throttle(request, user)
    schema = "RunCreateStreamingStateless" if stateless else "RunCreateStreamingStateful"
    body = parse_json_body(request.body, schema)
    idempotency = services.Idempotency.from_header(
        request.headers.get("Idempotency-Key"), method="POST", path=request.path, body=body
    )
    # Only a replay resumes: a new run's stream starts at its first event.
    resume_after = (
        parse_last_event_id(request.headers.get("Last-Event-ID")) if idempotency else None
    )

    async def start() -> HttpResponseBase:
        # A replay joins the first request's run: from its first event (or after Last-Event-ID).
        run, created, discard = await in_executor(run_create_awaited)(
            owner=user, body=body, thread_id=thread_id, idempotency=idempotency
        )
        if isinstance(run, DiscardedRun):
            # Its events went with its thread; the stream says so, as a join of it would.
            response = EventStreamResponse(single_event_body("error", RUN_NOT_FOUND))
            response["Idempotent-Replayed"] = "true"
            return response
        stream = run_stream_body(
            run.pk,
            0 if created or resume_after is None else resume_after,
            with_ids=bool(body.get("stream_resumable")),
            cancel_on_disconnect=body.get("on_disconnect") == "cancel",
            temporary_thread_id=run.thread_id if discard else None,
        )
        if stateless:
            # As the real server: a Location route that does not exist, so the SDK's reconnect
            # check (GET /runs/{id}) gets a 404 and treats the run as finished.
            response = _run_stream_response(
                stream, location=f"/runs/{run.pk}/stream", content_location=f"/runs/{run.pk}"
            )
        else:
            base = f"/threads/{run.thread_id}/runs/{run.pk}"
            response = _run_stream_response(stream, location=f"{base}/stream", content_location=base)
        if idempotency is not None:
            response["Idempotent-Replayed"] = "false" if created else "true"
        return response

    return await stream_open(user, start)


# The real server's (Starlette's) words for a wrong method, not DRF's.
langgraph_stream = functools.partial(
    event_stream_view, errors=ErrorStyle.LANGGRAPH, method_not_allowed="Method Not Allowed"
)


@langgraph_stream(method="POST")
async def thread_run_stream(request: HttpRequest, thread_id: str) -> HttpResponseBase:
    """``POST /threads/{thread_id}/runs/stream``."""
    return await _create_and_stream(request, thread_id)


@langgraph_stream(method="POST")
async def stateless_run_stream(request: HttpRequest) -> HttpResponseBase:
    """``POST /runs/stream``: a run on a temporary thread, deleted after the stream unless
    ``on_completion: "keep"``."""
    return await _create_and_stream(request, None)


def _run_for_join(user: Any, thread_id: str, run_id: str) -> tuple[UUID, dict | None, int]:
    thread_pk = services.parse_uuid(thread_id, "thread")
    run_pk = services.parse_uuid(run_id, "run")
    kwargs = (
        Run.objects.filter(pk=run_pk, thread_id=thread_pk, owner=user)
        .values_list("kwargs", flat=True)
        .first()
    )
    return run_pk, kwargs, _last_run_event_id(run_pk) if kwargs is not None else 0


@langgraph_stream(method="GET")
async def run_join_stream(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponseBase:
    """``GET /threads/{thread_id}/runs/{run_id}/stream``: live from now, or the stored events
    after ``Last-Event-ID``. Without the header a join after the run ended is an empty 200, as on
    the real server."""
    user = (await stream_client(request)).user
    modes = parse_stream_mode_filter(request)
    resume_after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    run_pk, kwargs, last_id = await in_executor(_run_for_join)(user, thread_id, run_id)
    if kwargs is None:
        # As on the real server: a 200 stream whose only event reports the missing run.
        return EventStreamResponse(single_event_body("error", RUN_NOT_FOUND))
    cancel = parse_bool(request.GET.get("cancel_on_disconnect", ""))

    async def start() -> HttpResponseBase:
        stream = run_stream_body(
            run_pk,
            last_id if resume_after is None else resume_after,
            modes=modes,
            with_ids=bool(kwargs.get("resumable")),
            cancel_on_disconnect=cancel,
        )
        return EventStreamResponse(stream)

    return await stream_open(user, start)


def _thread_for_stream(user: Any, thread_id: str) -> tuple[UUID, int]:
    thread = services.thread_get(user=user, thread_id=thread_id)
    return thread.pk, _last_thread_event_id(thread.pk)


@langgraph_stream(method="GET")
async def thread_stream(request: HttpRequest, thread_id: str) -> HttpResponseBase:
    """``GET /threads/{thread_id}/stream``: every run's events and a ``metadata``
    ``{"status": "run_done", "run_id"}`` after each run; live from now, or after
    ``Last-Event-ID`` (``-`` for everything stored)."""
    user = (await stream_client(request)).user
    modes = parse_thread_stream_modes(request)
    resume_after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    thread_pk, last_id = await in_executor(_thread_for_stream)(user, thread_id)
    after_id = last_id if resume_after is None else resume_after

    async def start() -> HttpResponseBase:
        return EventStreamResponse(follow_thread(thread_pk, after_id, modes=modes))

    return await stream_open(user, start)
