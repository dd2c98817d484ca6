"""`GET /api/v1/executions/{id}/events`: resumable SSE of status and progress."""

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncClient

from executions import runtime, services, streams
from executions.models import Execution
from executions.registry import agent, registry
from tests.conftest import streams_watching, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def parse_sse(body: bytes) -> list[dict]:
    frames = []
    for block in body.split(b"\r\n\r\n"):
        if not block:
            continue
        frame: dict = {}
        for line in block.split(b"\r\n"):
            name, _, value = line.partition(b": ")
            frame[name.decode()] = value.decode()
        frames.append(frame)
    return frames


def read_stream(path: str, *, timeout: float = 20.0, key: str | None = None, last_event_id: str | None = None):
    headers = {}
    if key:
        headers["x-api-key"] = key
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id

    async def read():
        response = await AsyncClient().get(path, headers=headers)
        if not response.streaming:
            return response.status_code, response, []
        chunks = []
        deadline = time.monotonic() + timeout
        stream = aiter(response.streaming_content)
        while True:
            # Bounded per chunk too: a stream that goes silent fails the test instead of hanging it.
            try:
                chunk = await asyncio.wait_for(anext(stream), max(0.01, deadline - time.monotonic()))
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise AssertionError(f"stream did not end within {timeout} s: {chunks}") from None
            chunks.append(chunk)
        return response.status_code, response, parse_sse(b"".join(chunks))

    return async_to_sync(read)()


def events_url(execution: Execution) -> str:
    return f"/api/v1/executions/{execution.pk}/events"


def test_a_finished_execution_replays_every_event_then_closes(alice, api):
    execution = services.execution_create(
        owner=alice, type="pipeline", target_id="countdown", inputs={"steps": 2, "step_seconds": 0}
    )
    runtime.execute(execution.pk)

    status, response, frames = read_stream(events_url(execution), key=api.raw_key)

    assert status == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    assert [f["event"] for f in frames] == ["created", "status", "progress", "progress", "status"]
    assert [int(f["id"]) for f in frames] == [1, 2, 3, 4, 5]
    assert '"status":"completed"' in frames[-1]["data"]


def test_last_event_id_resumes_with_no_gap_and_no_duplicate(alice, api):
    execution = services.execution_create(owner=alice, type="agent", target_id="summarize", inputs={"text": "A. B."})
    runtime.execute(execution.pk)

    _, _, all_frames = read_stream(events_url(execution), key=api.raw_key)
    _, _, resumed = read_stream(events_url(execution), key=api.raw_key, last_event_id="2")
    _, _, by_query = read_stream(events_url(execution) + "?last_event_id=2", key=api.raw_key)

    assert resumed == by_query == all_frames[2:]


def test_live_progress_arrives_while_the_worker_runs(alice, api):
    execution = services.execution_create(
        owner=alice, type="pipeline", target_id="countdown", inputs={"steps": 3, "step_seconds": 0.3}
    )

    def work() -> None:
        # The reader must follow the run, not replay it.
        wait_for(streams_watching, timeout=10, message="the reader's stream to start")
        runtime.execute(execution.pk)
        connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    started = time.monotonic()
    _, _, frames = read_stream(events_url(execution), key=api.raw_key)
    worker.join()

    assert time.monotonic() - started >= 0.9  # it waited for the run rather than ending early
    assert [f["event"] for f in frames] == ["created", "status", "progress", "progress", "progress", "status"]
    assert [int(f["id"]) for f in frames] == list(range(1, 7))


def test_heartbeats_while_idle_and_the_stream_ends_when_cancelled(alice, api, monkeypatch):
    monkeypatch.setattr(streams, "HEARTBEAT_INTERVAL", 0.2)
    execution = services.execution_create(owner=alice, type="agent", target_id="echo")

    def cancel_later() -> None:
        time.sleep(1.5)
        services.execution_cancel(execution=Execution.objects.get(pk=execution.pk))
        connection.close()

    canceller = threading.Thread(target=cancel_later)
    canceller.start()
    _, _, frames = read_stream(events_url(execution), key=api.raw_key)
    canceller.join()

    assert frames[0]["event"] == "created"
    assert frames[-1]["event"] == "status" and '"status":"cancelled"' in frames[-1]["data"]
    # Only `: heartbeat` comments in between, a couple of them at least in 1.5 s of silence.
    assert len(frames[1:-1]) >= 2
    assert all(f == {"": "heartbeat"} for f in frames[1:-1]), frames


def test_a_fresh_stream_of_an_execution_cancelled_while_running_replays_the_workers_stop(alice, api):
    # The row turns cancelled at once; the worker records its stop afterwards. Both are stored
    # events, so a first request must get both, as a resume with Last-Event-ID does.
    @agent("cancelled-while-running-stream-test-agent")
    def cancelled_while_running(inputs, ctx):
        services.execution_cancel(execution=Execution.objects.get(pk=ctx.execution_id))
        ctx.progress(current_step=1, total_steps=2)  # the progress point that notices the cancel
        return {}

    try:
        execution = services.execution_create(
            owner=alice, type="agent", target_id="cancelled-while-running-stream-test-agent"
        )
        assert runtime.execute(execution.pk) == "cancelled"
    finally:
        registry.unregister("agent", "cancelled-while-running-stream-test-agent")

    _, _, frames = read_stream(events_url(execution), key=api.raw_key)
    _, _, resumed = read_stream(events_url(execution), key=api.raw_key, last_event_id="0")

    assert [f["event"] for f in frames] == ["created", "status", "status", "worker_stopped"]
    assert '"status":"cancelled"' in frames[2]["data"] and '"reason":"cancelled"' in frames[3]["data"]
    assert resumed == frames


def test_stream_auth_and_errors(alice, api, bob_api):
    execution = services.execution_create(owner=alice, type="agent", target_id="echo")

    def error(path: str, **kwargs) -> tuple[int, dict, dict]:
        status, response, _ = read_stream(path, **kwargs)
        return status, response.json(), response.headers

    # The API's own errors, with the headers its other views send.
    status, body, headers = error(events_url(execution))
    assert (status, body) == (401, {"detail": "Authentication credentials were not provided."})
    assert headers["WWW-Authenticate"] == 'Bearer realm="api"'
    status, body, headers = error(events_url(execution), key="not-a-key")
    assert (status, body) == (401, {"detail": "Invalid or revoked API key."})
    assert headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert error(events_url(execution), key=bob_api.raw_key)[:2] == (404, {"detail": "Not found."})
    not_a_uuid = "/api/v1/executions/not-a-uuid/events"
    assert error(not_a_uuid, key=api.raw_key)[:2] == (404, {"detail": "Not found."})
    assert error(events_url(execution), key=api.raw_key, last_event_id="x")[:2] == (
        400, {"detail": "Last-Event-ID must be an event sequence number."}
    )

    post = async_to_sync(AsyncClient().post)(
        events_url(execution), headers={"x-api-key": api.raw_key}
    )
    assert (post.status_code, post.json()) == (405, {"detail": 'Method "POST" not allowed.'})
    assert post["Allow"] == "GET"


def test_open_streams_per_user_are_capped_with_429_and_freed_when_closed(alice, bob, api, bob_api, settings):
    from django.core.cache import cache

    cache.clear()
    settings.STREAMS_MAX_PER_USER = 2
    execution = services.execution_create(owner=alice, type="agent", target_id="echo")
    bobs = services.execution_create(owner=bob, type="agent", target_id="echo")

    async def scenario():
        client = AsyncClient()
        open_stream = lambda e, key: client.get(events_url(e), headers={"x-api-key": key})  # noqa: E731
        first = await open_stream(execution, api.raw_key)
        second = await open_stream(execution, api.raw_key)
        third = await open_stream(execution, api.raw_key)
        assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
        assert "2 open streams" in third.json()["detail"]
        assert (await open_stream(bobs, bob_api.raw_key)).status_code == 200  # per user
        first.close()  # what Django does when the client goes away
        fourth = await open_stream(execution, api.raw_key)
        assert fourth.status_code == 200
        second.close()
        fourth.close()

    async_to_sync(scenario)()
