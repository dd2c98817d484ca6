"""The admin's multiplexed progress stream: one SSE connection for every active row of a page.

Executions move through the real service and runtime (``runtime.execute`` in a thread, like a
worker), and the stream is read through Django's ``AsyncClient`` as the browser would read it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from uuid import UUID

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from executions import admin_streams, runtime, services
from executions.models import Execution
from project.realtime.event_hub import hub
from tests.executions.test_streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)

STREAM = reverse("admin:executions_execution_progress_stream")


def logged_in(user) -> AsyncClient:
    client = AsyncClient()
    if user is not None:
        client.force_login(user)
    return client


def ids_param(*executions: Execution | UUID) -> str:
    return ",".join(str(getattr(e, "pk", e)) for e in executions)


def read(
    client: AsyncClient,
    ids: str | None,
    *,
    timeout: float = 20.0,
    stop_when: Callable[[list[dict]], bool] | None = None,
    on_first_frames: Callable[[], object] | None = None,
):
    """(status, response, frames, watchers left open) of one stream read to its end.

    ``on_first_frames`` is called once the first chunk arrived: the stream has read the initial
    state, so what happens next must come live. With ``stop_when``, the reader goes away as soon
    as the frames satisfy it, the way a browser closing the tab cancels the server's task.
    """

    async def run():
        response = await client.get(STREAM, {"ids": ids} if ids is not None else {})
        if not response.streaming:
            return response.status_code, response, [], 0
        frames: list[dict] = []
        enough = asyncio.Event()

        async def consume() -> None:
            buffer = b""
            async for chunk in response.streaming_content:
                buffer += chunk
                frames[:] = parse_sse(buffer)
                if on_first_frames is not None and len(buffer) == len(chunk):
                    on_first_frames()
                if stop_when is not None and stop_when(frames):
                    enough.set()
            enough.set()

        reader = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(enough.wait(), timeout)
        except TimeoutError:
            reader.cancel()
            pytest.fail(f"the stream did not end in {timeout}s: {frames}")
        if reader.done():
            await reader  # ended by the server; re-raises what went wrong in it
        else:
            # Disconnect: cancel the task that iterates, as the ASGI handler does.
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader
        return response.status_code, response, frames, hub().open_watchers

    return async_to_sync(run)()


def snapshots_of(frames: list[dict], execution: Execution) -> list[dict]:
    found = []
    for frame in frames:
        if frame.get("event") == "snapshot":
            data = json.loads(frame["data"])
            if data["id"] == str(execution.pk):
                found.append(data)
    return found


class Later:
    """Work started in threads once the stream has sent its first frame, so it must follow it
    live rather than replay it; ``join`` waits for all of it."""

    def __init__(self, *work: tuple[Callable[[], object], float]) -> None:
        self._work = work
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for function, delay in self._work:
            thread = threading.Thread(target=self._run, args=(function, delay))
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _run(function: Callable[[], object], delay: float) -> None:
        time.sleep(delay)
        try:
            function()
        finally:
            connection.close()

    def join(self) -> None:
        assert self._threads, "the stream never sent a first frame"
        for thread in self._threads:
            thread.join()


@pytest.fixture
def owner(make_user):
    return make_user("owner")


@pytest.fixture
def staff(admin_user):
    return logged_in(admin_user)


def create(
    owner, target: str = "echo", inputs: dict | None = None, type: str = "agent"
) -> Execution:
    return services.execution_create(
        owner=owner, type=type, target_id=target, inputs=inputs if inputs is not None else {}
    )


# --- access and input ---------------------------------------------------------------------------


def test_only_staff_who_may_view_executions_get_the_stream(owner, make_user, django_user_model):
    execution = create(owner)
    ids = ids_param(execution)

    status, response, _, _ = read(logged_in(None), ids)
    assert (status, response.json()) == (403, {"detail": "Staff only."})

    # The execution's own owner is not staff: the admin stream is not theirs to read.
    status, response, _, _ = read(logged_in(owner), ids)
    assert (status, response.json()) == (403, {"detail": "Staff only."})

    clerk = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    status, response, _, _ = read(logged_in(clerk), ids)
    assert (status, response.json()) == (403, {"detail": "You may not view executions."})

    clerk.user_permissions.add(Permission.objects.get(codename="view_execution"))
    status, response, frames, _ = read(logged_in(clerk), ids, stop_when=lambda f: len(f) >= 1)
    assert status == 200 and snapshots_of(frames, execution)[0]["status"] == "pending"


def test_bad_requests_get_a_clear_400(staff):
    status, response, _, _ = read(staff, None)
    assert status == 400 and "?ids=" in response.json()["detail"]
    status, response, _, _ = read(staff, "3f2c,not-an-id")
    assert (status, response.json()) == (400, {"detail": "Not an execution id: '3f2c'."})
    status, response, _, _ = read(staff, ",".join(str(UUID(int=i)) for i in range(201)))
    assert (status, response.json()) == (400, {"detail": "At most 200 ids per request."})

    post = async_to_sync(staff.post)(STREAM, {"ids": str(UUID(int=1))})
    assert (post.status_code, post.json()) == (405, {"detail": "Use GET."})


def test_the_stream_counts_against_the_users_open_streams(admin_user, owner, settings):
    from django.core.cache import cache

    cache.clear()
    settings.STREAMS_MAX_PER_USER = 1
    ids = {"ids": ids_param(create(owner))}
    client = logged_in(admin_user)

    async def scenario() -> None:
        first = await client.get(STREAM, ids)
        refused = await client.get(STREAM, ids)
        assert (first.status_code, refused.status_code) == (200, 429)
        assert refused.json() == {
            "detail": "You already have 1 open streams (STREAMS_MAX_PER_USER); close some first."
        }
        first.close()  # the page went away
        again = await client.get(STREAM, ids)
        assert again.status_code == 200
        again.close()

    async_to_sync(scenario)()


# --- what it sends ------------------------------------------------------------------------------


def test_finished_and_unknown_executions_get_one_event_each_then_the_stream_ends(staff, owner):
    completed = create(owner, "countdown", {"steps": 2, "step_seconds": 0}, type="pipeline")
    runtime.execute(completed.pk)
    cancelled = services.execution_cancel(execution=create(owner))
    unknown = UUID(int=42)

    status, response, frames, watchers = read(staff, ids_param(completed, unknown, cancelled))

    assert status == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    assert [f["event"] for f in frames] == ["snapshot", "gone", "snapshot"]
    done, gone, stopped = (json.loads(f["data"]) for f in frames)
    assert (done["id"], done["status"], done["active"]) == (str(completed.pk), "completed", False)
    assert (done["percentage_label"], done["step_label"]) == ("100%", "step 2/2 · tick 1")
    assert gone == {"id": str(unknown)}
    assert (stopped["status"], stopped["status_label"]) == ("cancelled", "Cancelled")
    assert watchers == 0


def test_progress_arrives_live_for_every_execution_of_the_page(staff, owner):
    done = create(owner)  # run first: a worker takes the oldest pending execution
    runtime.execute(done.pk)
    first = create(owner, "countdown", {"steps": 3, "step_seconds": 0.25}, type="pipeline")
    second = create(owner, "countdown", {"steps": 2, "step_seconds": 0.25}, type="pipeline")

    workers = Later(
        (lambda: runtime.execute(first.pk), 0), (lambda: runtime.execute(second.pk), 0.3)
    )
    started = time.monotonic()
    status, _, frames, watchers = read(
        staff, ids_param(first, second, done), on_first_frames=workers.start
    )
    workers.join()

    assert status == 200
    assert time.monotonic() - started >= 0.8  # it followed the runs rather than ending early
    # Each execution is sent at once, and again at every change: never twice the same state.
    assert [f["event"] for f in frames[:3]] == ["snapshot"] * 3
    for execution, steps in ((first, 3), (second, 2)):
        seen = snapshots_of(frames, execution)
        assert seen[0]["status"] == "pending"
        assert seen[-1]["status"] == "completed" and seen[-1]["percentage"] == 100.0
        # Steps are 0.25 s apart and the hub wakes readers within 0.1 s: the page sees them move.
        steps_seen = [s["current_step"] for s in seen if s["status"] == "running"]
        assert steps_seen == sorted(steps_seen) and len(set(steps_seen) - {0}) >= steps - 1
        percentages = [s["percentage"] for s in seen]
        assert percentages == sorted(percentages)
        seqs = [s["seq"] for s in seen]
        assert seqs == sorted(set(seqs)), "a snapshot was sent twice"
    assert len(snapshots_of(frames, done)) == 1
    assert watchers == 0


def test_idle_stream_heartbeats_and_ends_when_the_last_execution_is_cancelled(
    staff, owner, monkeypatch
):
    monkeypatch.setattr(admin_streams, "HEARTBEAT_INTERVAL", 0.2)
    monkeypatch.setattr(admin_streams, "REFRESH_INTERVAL", 0.2)
    waiting = create(owner)
    canceller = Later(
        (lambda: services.execution_cancel(execution=Execution.objects.get(pk=waiting.pk)), 0.9)
    )
    _, _, frames, _ = read(staff, ids_param(waiting), on_first_frames=canceller.start)
    canceller.join()

    assert json.loads(frames[0]["data"])["status"] == "pending"
    assert json.loads(frames[-1]["data"])["status"] == "cancelled"
    # Nothing but heartbeat comments while the pending execution waited.
    assert len(frames[1:-1]) >= 3
    assert all(f == {"": "heartbeat"} for f in frames[1:-1]), frames


def test_running_rows_are_resent_so_their_duration_keeps_counting(staff, owner, monkeypatch):
    monkeypatch.setattr(admin_streams, "HEARTBEAT_INTERVAL", 0.3)
    monkeypatch.setattr(admin_streams, "REFRESH_INTERVAL", 0.3)
    execution = create(owner, "countdown", {"steps": 5, "step_seconds": 0}, type="pipeline")
    assert runtime.claim(execution.pk) is not None  # running, and silent: a worker mid-step

    def enough(frames: list[dict]) -> bool:
        return len(snapshots_of(frames, execution)) >= 4

    _, _, frames, watchers = read(staff, ids_param(execution), stop_when=enough)

    seen = snapshots_of(frames, execution)
    assert {s["seq"] for s in seen} == {2}  # no new event: only the clock moved
    durations = [float(s["duration"].rstrip("s")) for s in seen]
    assert durations == sorted(durations) and durations[-1] >= durations[0] + 0.6
    # The reader went away mid-stream: the stream stopped watching.
    assert watchers == 0


def test_a_page_of_fifty_rows_costs_the_same_queries_as_two(staff, owner):
    executions = [create(owner) for _ in range(50)]
    for execution in executions:
        services.execution_cancel(execution=execution)

    def queries(rows: list[Execution]) -> int:
        with CaptureQueriesContext(connection) as captured:
            _, _, frames, _ = read(staff, ids_param(*rows))
        assert len(frames) == len(rows)
        return len(captured.captured_queries)

    assert queries(executions) == queries(executions[:2])
