"""``POST /threads/{thread_id}/stream/events``: a thread's events in the v2 protocol's shape.

The runs of a thread store their events as every other run does (``runs.models.RunEvent``, the
v1 SSE events); this stream reads them and writes each as protocol events
(``{"type": "event", "event_id", "seq", "method", "params": {"namespace", "timestamp", "data"}}``):

=====================================  ==========================================================
stored event                           protocol events
=====================================  ==========================================================
``metadata`` ``{run_id, attempt}``     ``lifecycle`` ``{"event": "started", "graph_name"}``
``values[|ns…]``                       ``values``, its data the chunk; a root chunk holding
                                       ``__interrupt__`` gives one ``input.requested``
                                       ``{interrupt_id, payload}`` per interrupt instead
``updates`` / ``custom`` / ``tasks``   the same method, the chunk as data
``metadata`` ``run_done`` (run end)    ``lifecycle`` ``completed``, ``interrupted`` (the run
                                       stopped at an interrupt) or ``failed`` (with ``error``)
=====================================  ==========================================================

Sequence numbers: one stored event may give several protocol events, so an event's ``seq`` is its
stored event's id times ``SEQ_SPAN`` plus its rank: increasing along the thread, and ``since``
resumes after any of them.

Where a stream starts: after ``since`` when the body gives it; otherwise at the start of the run
the thread's last ``run.start`` / ``input.respond`` began, until that run's end has been sent on a
stream of lifecycle events only, or a stream that sent it closed (langgraph-sdk opens its
lifecycle stream after ``run.start`` answers, without ``since``: a fast run may be over by then,
and it must still see it end); otherwise live, from now. That marker is kept in the shared cache
(Redis when configured).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.core.cache import cache
from django.db.models import Max
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from project.db.async_db import in_executor
from project.realtime.event_hub import watch
from project.realtime.sse import EventStreamResponse, encode_data, stream_client, stream_open
from runs import services
from runs.errors import BadRequest
from runs.models import Run, RunEvent, RunStatus, Thread
from runs.streams import READ_BATCH, heartbeats_until_woken, langgraph_stream
from runs.wakeups import thread_channel

# The stream modes of a protocol run: what the channels below are made from.
PROTOCOL_STREAM_MODES = ("values", "updates", "custom", "tasks")
CHANNELS = ("values", "updates", "messages", "tools", "lifecycle", "input", "tasks", "custom")
SEQ_SPAN = 1000
REPLAY_TTL_SECONDS = 3600


# --- where a stream starts -------------------------------------------------------------------------


def _replay_key(thread_id: UUID | str) -> str:
    return f"runs:protocol:replay:{thread_id}"


def thread_last_seq(thread_id: UUID | str) -> int:
    """The seq of the thread's last protocol event so far (0 before any)."""
    last = RunEvent.objects.filter(run__thread_id=thread_id).aggregate(m=Max("id"))["m"]
    return (last or 0) * SEQ_SPAN + SEQ_SPAN - 1 if last else 0


def remember_run_for_replay(*, thread_id: UUID | str, run_id: UUID | str, since: int) -> None:
    cache.set(_replay_key(thread_id), {"run_id": str(run_id), "since": since}, REPLAY_TTL_SECONDS)


def _forget_run_for_replay(thread_id: UUID | str, run_id: str) -> None:
    marker = cache.get(_replay_key(thread_id))
    if isinstance(marker, dict) and marker.get("run_id") == run_id:
        cache.delete(_replay_key(thread_id))


def _start_seq(thread_id: UUID, since: int | None) -> int:
    if since is not None:
        return since
    marker = cache.get(_replay_key(thread_id))
    if isinstance(marker, dict) and isinstance(marker.get("since"), int):
        return marker["since"]
    return thread_last_seq(thread_id)


# --- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    channels: frozenset[str]
    namespaces: tuple[tuple[str, ...], ...] | None
    depth: int | None

    def wants(self, event: dict[str, Any]) -> bool:
        channel = event_channel(event)
        if channel not in self.channels and not (channel.startswith("custom:") and "custom" in self.channels):
            return False
        if self.namespaces is None:
            return True
        namespace = event["params"]["namespace"]
        return any(
            _prefix_match(namespace, prefix) and (self.depth is None or len(namespace) - len(prefix) <= self.depth)
            for prefix in self.namespaces
        )


def event_channel(event: dict[str, Any]) -> str:
    method = event["method"]
    if method == "input.requested":
        return "input"
    return method


def _prefix_match(namespace: list[str], prefix: tuple[str, ...]) -> bool:
    """Whether ``namespace`` starts with ``prefix``; a prefix segment without ``:`` also matches a
    segment's graph name without its task id (``child`` matches ``child:1f2e…``)."""
    if len(prefix) > len(namespace):
        return False
    for wanted, segment in zip(prefix, namespace, strict=False):
        if segment != wanted and (":" in wanted or segment.split(":", 1)[0] != wanted):
            return False
    return True


def _non_negative_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"`{name}` must be a non-negative integer.")
    return value


def parse_stream_request(raw: bytes) -> tuple[EventFilter, int | None]:
    """The filter and ``since`` of a ``ProtocolEventStreamRequest``; a 400 naming what is wrong."""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise BadRequest("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object with `channels`.")
    channels = body.get("channels")
    if not isinstance(channels, list) or not channels:
        raise BadRequest("`channels` must be a non-empty list.")
    for channel in channels:
        if not isinstance(channel, str) or not (
            channel in CHANNELS or (channel.startswith("custom:") and len(channel) > len("custom:"))
        ):
            raise BadRequest(f"Unknown channel {channel!r}: expected one of {list(CHANNELS)} or custom:<name>.")
    namespaces = body.get("namespaces")
    if namespaces is not None and not (
        isinstance(namespaces, list)
        and all(isinstance(ns, list) and all(isinstance(s, str) for s in ns) for ns in namespaces)
    ):
        raise BadRequest("`namespaces` must be a list of namespaces, each a list of strings.")
    depth = _non_negative_int(body, "depth")
    since = _non_negative_int(body, "since")
    wanted = EventFilter(
        frozenset(channels),
        None if namespaces is None else tuple(tuple(ns) for ns in namespaces),
        depth,
    )
    return wanted, since


# --- stored events to protocol events --------------------------------------------------------------


@dataclass(frozen=True)
class RunEnd:
    status: str
    error: Any
    interrupted: bool
    graph_id: str


@dataclass(frozen=True)
class StoredRow:
    id: int
    run_id: UUID
    event: str
    data: str
    created_at_ms: int
    graph_id: str


def _protocol_event(seq: int, method: str, namespace: list[str], timestamp: int, data: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "event_id": str(seq),
        "seq": seq,
        "method": method,
        "params": {"namespace": namespace, "timestamp": timestamp, "data": data},
    }


def _lifecycle_end(end: RunEnd | None) -> dict[str, Any]:
    if end is None:  # the run is gone (deleted with its events but this marker, in a race)
        return {"event": "failed", "error": "The run was deleted."}
    data: dict[str, Any] = {"graph_name": end.graph_id}
    if end.status == RunStatus.SUCCESS:
        data["event"] = "interrupted" if end.interrupted else "completed"
        return data
    data["event"] = "failed"
    error = end.error if isinstance(end.error, dict) else {}
    data["error"] = error.get("message") or f"The run ended {end.status}."
    return data


def _interrupts(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in chunk.get("__interrupt__") or () if isinstance(i, dict)]


def translate(row: StoredRow, ends: dict[UUID, RunEnd]) -> list[dict[str, Any]]:
    """The protocol events of one stored event (see the module's table)."""
    name, *namespace = row.event.split("|")
    data = json.loads(row.data)
    out: list[tuple[str, list[str], Any]] = []
    if name == "metadata":
        if isinstance(data, dict) and data.get("status") == "run_done":
            out.append(("lifecycle", [], _lifecycle_end(ends.get(row.run_id))))
        else:
            out.append(("lifecycle", [], {"event": "started", "graph_name": row.graph_id}))
    elif name in ("values", "updates"):
        rest = data
        if isinstance(data, dict) and "__interrupt__" in data:
            rest = {key: value for key, value in data.items() if key != "__interrupt__"}
            if name == "values" and not namespace:
                for interrupt in _interrupts(data):
                    # ``payload`` is the protocol's name; langgraph-sdk 0.4 reads ``value``.
                    value = interrupt.get("value")
                    out.append((
                        "input.requested", [],
                        {"interrupt_id": interrupt.get("id"), "payload": value, "value": value},
                    ))
        if rest or not isinstance(data, dict) or "__interrupt__" not in data:
            out.append((name, namespace, rest))
    elif name in ("custom", "tasks"):
        out.append((name, namespace, data))
    return [
        _protocol_event(row.id * SEQ_SPAN + rank, method, ns, row.created_at_ms, payload)
        for rank, (method, ns, payload) in enumerate(out[:SEQ_SPAN])
    ]


# --- reading ---------------------------------------------------------------------------------------


def _thread_events(thread_id: UUID, first_id: int) -> tuple[bool, list[StoredRow], dict[UUID, RunEnd]]:
    exists = Thread.objects.filter(pk=thread_id).exists()
    rows = [
        StoredRow(pk, run_id, event, data, int(created_at.timestamp() * 1000), graph_id)
        for pk, run_id, event, data, created_at, graph_id in (
            RunEvent.objects.filter(run__thread_id=thread_id, id__gte=first_id)
            .order_by("id")
            .values_list("id", "run_id", "event", "data", "created_at", "run__assistant__graph_id")[:READ_BATCH]
        )
    ]
    ended = {row.run_id for row in rows if row.event == "metadata" and '"run_done"' in row.data}
    ends: dict[UUID, RunEnd] = {}
    if ended:
        interrupted = set(
            Run.objects.filter(pk__in=ended, result__has_key="__interrupt__").values_list("pk", flat=True)
        )
        for pk, status, error, graph_id in Run.objects.filter(pk__in=ended).values_list(
            "pk", "status", "error", "assistant__graph_id"
        ):
            ends[pk] = RunEnd(status, error, pk in interrupted, graph_id)
    return exists, rows, ends


def _frame(event: dict[str, Any]) -> bytes:
    return (
        b"id: " + str(event["seq"]).encode()
        + b"\r\nevent: " + event["method"].encode()
        + b"\r\ndata: " + encode_data(event) + b"\r\n\r\n"
    )


def _is_root_end(event: dict[str, Any]) -> bool:
    return (
        event["method"] == "lifecycle"
        and not event["params"]["namespace"]
        and event["params"]["data"].get("event") in ("completed", "failed", "interrupted")
    )


async def follow_protocol(
    thread_id: UUID, after_seq: int, wanted: EventFilter
) -> AsyncIterator[bytes]:
    """Frames of the thread's protocol events after ``after_seq`` matching ``wanted``, until the
    thread is deleted or the client leaves; a heartbeat comment after 5 s of silence."""
    read = in_executor(_thread_events)
    ended_runs: set[str] = set()
    # A stream of runs' lifecycle only (langgraph-sdk's watcher, the one that needs the replay)
    # forgets the run at once when it sees the run end: a client leaving is noticed late, and the
    # next session's watcher on the thread must not see this run end as its own.
    watcher_only = wanted.channels <= {"lifecycle", "input"}
    try:
        async with watch(thread_channel(thread_id)) as watcher:
            last_write = time.monotonic()
            next_id = after_seq // SEQ_SPAN
            while True:
                watcher.arm()
                exists, rows, ends = await read(thread_id, next_id)
                for row in rows:
                    next_id = row.id + 1
                    for event in translate(row, ends):
                        if event["seq"] <= after_seq or not wanted.wants(event):
                            continue
                        if _is_root_end(event):
                            ended_runs.add(str(row.run_id))
                            if watcher_only:
                                _forget_ended(thread_id, [str(row.run_id)])
                        yield _frame(event)
                        last_write = time.monotonic()
                if len(rows) == READ_BATCH:
                    continue
                if not exists:
                    return
                async for heartbeat in heartbeats_until_woken(watcher, last_write):
                    yield heartbeat
                    last_write = time.monotonic()
    finally:
        # This client saw those runs end: a later stream without ``since`` starts live. (Cache
        # calls, not database ones: no await in a closing generator, which may be cancelled.)
        _forget_ended(thread_id, ended_runs)


def _forget_ended(thread_id: UUID, run_ids: Iterable[str]) -> None:
    for run_id in run_ids:
        _forget_run_for_replay(thread_id, run_id)


@langgraph_stream(method="POST")
async def thread_protocol_events(request: HttpRequest, thread_id: str) -> HttpResponseBase:
    """``POST /threads/{thread_id}/stream/events``: the thread's protocol events matching the
    body's ``channels``, ``namespaces`` and ``depth``, after ``since`` (see the module)."""
    user = (await stream_client(request, unsafe=True)).user
    wanted, since = parse_stream_request(request.body)

    def opening() -> tuple[UUID, int]:
        thread = services.thread_get(user=user, thread_id=thread_id)
        return thread.pk, _start_seq(thread.pk, since)

    thread_pk, after_seq = await in_executor(opening)()

    async def start() -> HttpResponseBase:
        return EventStreamResponse(follow_protocol(thread_pk, after_seq, wanted))

    return await stream_open(user, start)
