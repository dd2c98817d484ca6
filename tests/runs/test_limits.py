"""Limits and hardening of the runs API: Idempotency-Key on every create, the "create" throttle,
the per-user cap on active runs, the metadata size limit and the per-user cap on open streams.

In-process through Django's clients (the graph runs here through the worker's entry point),
except the concurrency test, which fires at two real server processes.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import cache
from django.db import connections
from django.test import AsyncClient
from django.utils import timezone
from rest_framework.throttling import ScopedRateThrottle

from accounts.models import api_key_create
from executions.services import execution_create
from runs import services, tasks
from runs.models import Assistant, DiscardedRun, Run, RunEvent, RunStatus, Thread
from runs.streams import format_event_id
from tests.runs.conftest import Server

pytestmark = pytest.mark.django_db(transaction=True)

RUN = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}
ECHOED = {
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "echo: hi"}]
}


@pytest.fixture(autouse=True)
def fresh_cache():
    # Throttle buckets and stream counters live in the cache, shared by every test in a process.
    cache.clear()
    yield
    cache.clear()
    # The graphs ran in asgiref's shared thread: close its connection.
    asyncio.run(sync_to_async(connections.close_all)())


def post(client, path: str, body=None, key: str | None = None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(path, body if body is not None else {}, format="json", **headers)


async def send(method: str, path: str, api_key: str, *, body=None, headers=None):
    """A request through the ASGI handler; the response's body is not read yet."""
    all_headers = {"x-api-key": api_key, **(headers or {})}
    client = AsyncClient()
    if body is None:
        return await getattr(client, method)(path, headers=all_headers)
    return await getattr(client, method)(path, body, content_type="application/json", headers=all_headers)


async def read_all(response) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


def frames(body: bytes) -> list[bytes]:
    return [frame + b"\r\n\r\n" for frame in body.split(b"\r\n\r\n") if frame.strip()]


def execute(run_id) -> Run | None:
    tasks.run_execute(str(run_id))
    return Run.objects.filter(pk=run_id).first()  # a stateless run may be gone with its thread


async def execute_meanwhile(run_id) -> None:
    """``execute`` from a test's event loop, in a thread of its own: the worker's entry point
    runs an event loop of its own, which the test's thread-sensitive executor would refuse."""

    def work() -> None:
        try:
            execute(run_id)
        finally:
            connections.close_all()

    await asyncio.get_running_loop().run_in_executor(None, work)


# --- Idempotency-Key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "model", "id_field"),
    [
        ("/assistants", {"graph_id": "echo", "name": "a"}, Assistant, "assistant_id"),
        ("/threads", {"metadata": {"a": 1}}, Thread, "thread_id"),
        ("/runs", RUN, Run, "run_id"),
    ],
)
def test_the_same_key_returns_the_original_object(api, bob_api, alice, path, body, model, id_field) -> None:
    first = post(api, path, body, key="k-1")
    again = post(api, path, body, key="k-1")
    bobs = post(bob_api, path, body, key="k-1")  # keys are per user
    unkeyed = post(api, path, body)

    assert first.status_code == again.status_code == bobs.status_code == unkeyed.status_code == 200
    assert (first["Idempotent-Replayed"], again["Idempotent-Replayed"]) == ("false", "true")
    assert bobs["Idempotent-Replayed"] == "false" and "Idempotent-Replayed" not in unkeyed
    assert again.json() == first.json()
    ids = {first.json()[id_field], bobs.json()[id_field], unkeyed.json()[id_field]}
    assert len(ids) == 3
    assert model.objects.filter(owner=alice, idempotency_key="k-1").count() == 1


def test_the_same_key_on_a_thread_returns_the_original_run(api, alice) -> None:
    thread_id = post(api, "/threads").json()["thread_id"]
    first = post(api, f"/threads/{thread_id}/runs", RUN, key="run-1")
    again = post(api, f"/threads/{thread_id}/runs", RUN, key="run-1")

    assert first.status_code == again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again["Content-Location"] == first["Content-Location"]
    assert Run.objects.filter(thread_id=thread_id).count() == 1


def test_the_same_key_with_another_request_is_409(api, alice) -> None:
    assert post(api, "/threads", {"metadata": {"a": 1}}, key="k").status_code == 200
    changed = post(api, "/threads", {"metadata": {"a": 2}}, key="k")
    assert changed.status_code == 409
    detail = changed.json()["detail"]
    assert "Idempotency-Key 'k' was already used for another request" in detail
    assert Thread.objects.get(owner=alice, idempotency_key="k").metadata == {"a": 1}

    first_thread = post(api, "/threads").json()["thread_id"]
    other_thread = post(api, "/threads").json()["thread_id"]
    assert post(api, f"/threads/{first_thread}/runs", RUN, key="r").status_code == 200
    elsewhere = post(api, f"/threads/{other_thread}/runs", RUN, key="r")  # same body, other thread
    assert elsewhere.status_code == 409
    assert "created run" in elsewhere.json()["detail"]
    # The plain create and its /wait variant are different requests.
    assert post(api, f"/threads/{first_thread}/runs/wait", RUN, key="r").status_code == 409
    assert not Run.objects.filter(thread_id=other_thread).exists()


def test_a_key_over_255_characters_is_422_and_creates_nothing(api, alice) -> None:
    thread_id = post(api, "/threads").json()["thread_id"]
    too_long = "k" * 256
    for path, body in [
        ("/assistants", {"graph_id": "echo"}),
        ("/threads", {}),
        (f"/threads/{thread_id}/runs", RUN),
        ("/runs", RUN),
        ("/runs/wait", RUN),
        ("/runs/batch", [RUN]),
    ]:
        response = post(api, path, body, key=too_long)
        assert response.status_code == 422, path
        assert response.json() == {
            "detail": "Idempotency-Key is too long: 256 characters, the limit is 255."
        }
    async def stream() -> tuple[int, bytes]:
        response = await send("post", "/runs/stream", api.raw_key, body=RUN, headers={"Idempotency-Key": too_long})
        return response.status_code, response.content

    status, content = async_to_sync(stream)()
    assert status == 422 and b"Idempotency-Key is too long" in content
    assert not Run.objects.exists()
    assert Thread.objects.filter(owner=alice).count() == 1
    assert post(api, "/threads", {}, key="k" * 255).status_code == 200


def test_a_batch_retried_with_its_key_creates_no_more_runs(api, alice) -> None:
    batch = [RUN, {**RUN, "metadata": {"n": 2}}]
    first = post(api, "/runs/batch", batch, key="b")
    again = post(api, "/runs/batch", batch, key="b")
    assert first.status_code == again.status_code == 200
    assert (first["Idempotent-Replayed"], again["Idempotent-Replayed"]) == ("false", "true")
    assert [r["run_id"] for r in again.json()] == [r["run_id"] for r in first.json()]
    assert Run.objects.filter(owner=alice).count() == 2
    assert post(api, "/runs/batch", [RUN], key="b").status_code == 409
    assert Run.objects.filter(owner=alice).count() == 2


def test_wait_replayed_waits_for_the_original_run(api, alice) -> None:
    thread_id = post(api, "/threads").json()["thread_id"]
    path = f"/threads/{thread_id}/runs/wait"
    headers = {"Idempotency-Key": "w"}

    async def scenario():
        first = await send("post", path, api.raw_key, body=RUN, headers=headers)
        replay = await send("post", path, api.raw_key, body=RUN, headers=headers)
        runs = await sync_to_async(list)(Run.objects.filter(thread_id=thread_id))
        assert len(runs) == 1 and runs[0].status == RunStatus.PENDING
        await execute_meanwhile(runs[0].pk)
        return first, await read_all(first), replay, await read_all(replay), runs[0]

    first, first_body, replay, replay_body, run = async_to_sync(scenario)()
    assert (first["Idempotent-Replayed"], replay["Idempotent-Replayed"]) == ("false", "true")
    assert replay["Location"] == first["Location"] == f"/threads/{thread_id}/runs/{run.pk}/join"
    assert httpx.Response(200, content=replay_body).json() == ECHOED
    assert replay_body == first_body


def test_stateless_wait_replayed_after_the_first_client_left_keeps_and_then_deletes_the_thread(api, alice) -> None:
    headers = {"Idempotency-Key": "sw"}

    async def scenario():
        first = await send("post", "/runs/wait", api.raw_key, body=RUN, headers=headers)
        # The first client hangs up while the run is pending: its thread is left to be deleted
        # when the run ends, as nobody will read it...
        reader = asyncio.ensure_future(read_all(first))
        await asyncio.sleep(0.3)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        run = await sync_to_async(Run.objects.get)(owner=alice)
        assert run.on_completion == "delete"
        # ...until the retry comes: it gets the result, then the thread goes.
        replay = await send("post", "/runs/wait", api.raw_key, body=RUN, headers=headers)
        await execute_meanwhile(run.pk)
        return run, replay, await read_all(replay)

    run, replay, body = async_to_sync(scenario)()
    assert replay["Idempotent-Replayed"] == "true"
    assert httpx.Response(200, content=body).json() == ECHOED
    assert not Thread.objects.filter(pk=run.thread_id).exists()


def test_stateless_stream_replayed_after_the_first_client_left_keeps_and_then_deletes_the_thread(
    api, alice
) -> None:
    headers = {"Idempotency-Key": "ss"}

    async def scenario():
        first = await send("post", "/runs/stream", api.raw_key, body=RUN, headers=headers)
        reader = asyncio.ensure_future(read_all(first))
        await asyncio.sleep(0.3)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        run = await sync_to_async(Run.objects.get)(owner=alice)
        assert run.on_completion == "delete"  # nobody left to read it: it goes with the run's end
        replay = await send("post", "/runs/stream", api.raw_key, body=RUN, headers=headers)
        taken_over = await sync_to_async(Run.objects.get)(pk=run.pk)
        assert taken_over.on_completion == ""  # the replay reads it now: the thread is the replay's
        await execute_meanwhile(run.pk)
        return run, replay, await read_all(replay)

    run, replay, body = async_to_sync(scenario)()
    assert replay["Idempotent-Replayed"] == "true"
    assert frames(body)[0].startswith(b"event: metadata") and b"echo: hi" in body
    assert not Thread.objects.filter(pk=run.thread_id).exists()


def test_a_stateless_run_gone_with_its_thread_still_answers_its_key(api, alice) -> None:
    headers = {"Idempotency-Key": "gone"}

    async def first_wait():
        first = await send("post", "/runs/wait", api.raw_key, body=RUN, headers=headers)
        run = await sync_to_async(Run.objects.get)(owner=alice)
        await execute_meanwhile(run.pk)
        return run, await read_all(first)

    run, first_body = async_to_sync(first_wait)()
    assert httpx.Response(200, content=first_body).json() == ECHOED
    assert not Thread.objects.filter(pk=run.thread_id).exists()  # read, so deleted

    replay = post(api, "/runs/wait", RUN, key="gone")
    assert replay.status_code == 200 and replay["Idempotent-Replayed"] == "true"
    assert replay.json() == ECHOED
    assert replay["Location"] == f"/threads/{run.thread_id}/runs/{run.pk}/join"
    assert post(api, "/runs/wait", {**RUN, "metadata": {"x": 1}}, key="gone").status_code == 409

    async def replay_stream():
        return await send("post", "/runs/stream", api.raw_key, body=RUN, headers=headers)

    # Another path is another request: a conflict, like any other change.
    response = async_to_sync(replay_stream)()
    assert response.status_code == 409 and "created run" in response.json()["detail"]
    assert not Run.objects.exists()

    # A plain stateless create deletes its thread when the run ends (the worker does).
    created = post(api, "/runs", RUN, key="plain").json()
    execute(created["run_id"])
    assert not Run.objects.exists()
    again = post(api, "/runs", RUN, key="plain")
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["run_id"] == created["run_id"] and again.json()["status"] == "success"
    changed = ("status", "updated_at")
    assert {k: v for k, v in again.json().items() if k not in changed} == {
        k: v for k, v in created.items() if k not in changed
    }
    assert not Run.objects.exists()

    # Operators' prune forgets them with the old threads.
    services.threads_prune_inactive(older_than=timezone.now() + timedelta(seconds=1))
    assert post(api, "/runs", RUN, key="plain").json()["run_id"] != created["run_id"]


def test_a_discarded_run_kept_as_an_earlier_release_did_is_shown_the_same(api, alice) -> None:
    # Earlier releases kept the API's body of the run itself; such rows still answer their key.
    created = post(api, "/runs", RUN, key="old-row").json()
    execute(created["run_id"])
    shown = post(api, "/runs", RUN, key="old-row").json()
    DiscardedRun.objects.filter(pk=created["run_id"]).update(run=shown)
    assert post(api, "/runs", RUN, key="old-row").json() == shown


def test_a_stream_replayed_after_its_stateless_run_was_discarded_says_run_not_found(api, alice) -> None:
    headers = {"Idempotency-Key": "gone-stream"}

    async def scenario():
        first = await send("post", "/runs/stream", api.raw_key, body=RUN, headers=headers)
        run = await sync_to_async(Run.objects.get)(owner=alice)
        await execute_meanwhile(run.pk)
        assert b"echo: hi" in await read_all(first)  # the whole stream, then the thread goes
        replay = await send("post", "/runs/stream", api.raw_key, body=RUN, headers=headers)
        return replay, await read_all(replay)

    replay, body = async_to_sync(scenario)()
    assert replay.status_code == 200 and replay["Idempotent-Replayed"] == "true"
    assert body == b'event: error\r\ndata: {"error":"HTTPException","message":"404: Run not found"}\r\n\r\n'
    assert not Run.objects.exists() and not Thread.objects.filter(owner=alice).exists()


def test_stream_replayed_joins_the_original_runs_stream_from_its_start(api, alice) -> None:
    thread_id = post(api, "/threads").json()["thread_id"]
    path = f"/threads/{thread_id}/runs/stream"
    body = {**RUN, "stream_resumable": True}

    async def scenario():
        first = await send("post", path, api.raw_key, body=body, headers={"Idempotency-Key": "s"})
        first.close()  # the client went away before any event
        run = await sync_to_async(Run.objects.get)(thread_id=thread_id)
        await execute_meanwhile(run.pk)
        replay = await send("post", path, api.raw_key, body=body, headers={"Idempotency-Key": "s"})
        everything = await read_all(replay)
        events = await sync_to_async(list)(RunEvent.objects.filter(run=run, thread_only=False).order_by("id"))
        resumed = await send(
            "post", path, api.raw_key, body=body,
            headers={"Idempotency-Key": "s", "Last-Event-ID": format_event_id(events[0].id)},
        )
        return first, run, replay, everything, events, await read_all(resumed)

    first, run, replay, everything, events, rest = async_to_sync(scenario)()
    assert (first["Idempotent-Replayed"], replay["Idempotent-Replayed"]) == ("false", "true")
    assert replay["Content-Location"] == f"/threads/{thread_id}/runs/{run.pk}"
    assert frames(everything) == [
        b"event: " + e.event.encode() + b"\r\ndata: " + e.data.encode()
        + b"\r\nid: " + format_event_id(e.id).encode() + b"\r\n\r\n"
        for e in events
    ]
    assert frames(everything)[0].startswith(b"event: metadata")
    assert frames(rest) == frames(everything)[1:]
    assert Run.objects.filter(owner=alice).count() == 1


@pytest.mark.live
def test_concurrent_creates_with_one_key_make_one_object(transactional_db, make_user) -> None:
    """Many requests with one key at once, spread over two server processes: one object."""
    owner = make_user("racer")
    api_key = api_key_create(user=owner)[1]
    servers = [Server(), Server()]
    try:
        thread_id = httpx.post(
            f"{servers[0].url}/threads", json={}, headers={"x-api-key": api_key}, timeout=30
        ).json()["thread_id"]
        requests_per_case = 12
        for path, body, id_field, model in [
            ("/threads", {"metadata": {"race": True}}, "thread_id", Thread),
            ("/assistants", {"graph_id": "echo"}, "assistant_id", Assistant),
            (f"/threads/{thread_id}/runs", {**RUN, "multitask_strategy": "reject"}, "run_id", Run),
            ("/runs", RUN, "run_id", Run),
        ]:
            key = f"race-{uuid.uuid4()}"
            gate = threading.Barrier(requests_per_case)

            def fire(index: int, path=path, body=body, key=key, gate=gate) -> httpx.Response:
                server = servers[index % 2]
                with httpx.Client(timeout=60) as client:
                    gate.wait()
                    return client.post(
                        server.url + path, json=body,
                        headers={"x-api-key": api_key, "Idempotency-Key": key},
                    )

            with ThreadPoolExecutor(requests_per_case) as pool:
                responses = list(pool.map(fire, range(requests_per_case)))
            assert [r.status_code for r in responses] == [200] * requests_per_case, [
                r.text for r in responses
            ]
            assert len({r.json()[id_field] for r in responses}) == 1, path
            assert sorted(r.headers["Idempotent-Replayed"] for r in responses) == (
                ["false"] + ["true"] * (requests_per_case - 1)
            ), path
            assert model.objects.filter(owner=owner, idempotency_key=key).count() == 1
        # Stateless runs live on threads of their own: one run, so one temporary thread.
        assert Thread.objects.filter(owner=owner, temporary=True).count() == 1
    finally:
        for server in servers:
            server.stop()


# --- the "create" throttle -----------------------------------------------------------------------


def test_creates_are_throttled_per_user_with_retry_after(api, bob_api, alice, monkeypatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"create": "4/min"})
    thread_id = post(api, "/threads").json()["thread_id"]
    assert post(api, "/assistants", {"graph_id": "echo"}).status_code == 200
    assert post(api, f"/threads/{thread_id}/runs", RUN).status_code == 200
    assert post(api, "/runs", RUN).status_code == 200

    for path, body in [
        ("/threads", {}),
        ("/assistants", {"graph_id": "echo"}),
        (f"/threads/{thread_id}/runs", RUN),
        (f"/threads/{thread_id}/runs/wait", RUN),
        ("/runs", RUN),
        ("/runs/wait", RUN),
        ("/runs/batch", [RUN]),
    ]:
        refused = post(api, path, body)
        assert refused.status_code == 429, path
        assert refused.json()["detail"].startswith("Request was throttled. Expected available in")
        # A minute after the end of the 5 s slice that counted the first creates.
        assert 0 < int(refused["Retry-After"]) <= 65

    async def stream():
        return await send("post", "/runs/stream", api.raw_key, body=RUN)

    refused = async_to_sync(stream)()
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert b"Request was throttled" in refused.content
    # Reads, updates and cancels are not creates; other users have their own budget.
    assert api.get(f"/threads/{thread_id}/runs").status_code == 200
    assert api.patch(f"/threads/{thread_id}", {"metadata": {"b": 1}}, format="json").status_code == 200
    assert post(api, "/threads/search").status_code == 200
    assert post(bob_api, "/threads").status_code == 200
    assert Run.objects.filter(owner=alice).count() == 2


def test_runs_and_executions_share_the_create_budget(api, monkeypatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"create": "2/min"})
    assert post(api, "/api/v1/executions", {"type": "agent", "target_id": "echo"}).status_code == 201
    assert post(api, "/threads").status_code == 200
    assert post(api, "/runs", RUN).status_code == 429


# --- the cap on active runs ----------------------------------------------------------------------


def test_active_runs_per_user_are_capped_with_429(api, bob_api, alice, settings) -> None:
    settings.RUNS_MAX_ACTIVE_PER_USER = 2
    thread_id = post(api, "/threads").json()["thread_id"]
    first = post(api, f"/threads/{thread_id}/runs", RUN, key="first")
    assert first.status_code == 200
    assert post(api, "/runs", RUN).status_code == 200

    for path, body in [
        (f"/threads/{thread_id}/runs", RUN),
        (f"/threads/{thread_id}/runs/wait", RUN),
        ("/runs", RUN),
        ("/runs/wait", RUN),
        ("/runs/batch", [RUN]),
    ]:
        refused = post(api, path, body)
        assert refused.status_code == 429, path
        assert refused.json() == {
            "detail": "You already have 2 pending or running runs (RUNS_MAX_ACTIVE_PER_USER); "
            "wait for some to finish or cancel them."
        }

    async def stream():
        return await send("post", f"/threads/{thread_id}/runs/stream", api.raw_key, body=RUN)

    refused = async_to_sync(stream)()
    assert refused.status_code == 429 and b"RUNS_MAX_ACTIVE_PER_USER" in refused.content
    assert Run.objects.filter(owner=alice).count() == 2
    # A retry of a create that already happened is no new run: it still answers.
    assert post(api, f"/threads/{thread_id}/runs", RUN, key="first").json() == first.json()
    assert post(bob_api, "/runs", RUN).status_code == 200  # per user

    execute(first.json()["run_id"])
    assert post(api, f"/threads/{thread_id}/runs", RUN).status_code == 200


def test_no_cap_when_the_setting_is_zero(api, settings) -> None:
    settings.RUNS_MAX_ACTIVE_PER_USER = 0
    assert all(post(api, "/runs", RUN).status_code == 200 for _ in range(3))


# --- metadata size -------------------------------------------------------------------------------

LIMIT = 64 * 1024


def metadata_of(size: int) -> dict:
    """Metadata whose compact JSON is exactly ``size`` bytes: {"x":"aaa..."}."""
    return {"x": "a" * (size - 8)}


def test_metadata_up_to_64_kb_is_accepted_and_over_it_is_422(api, alice) -> None:
    at_limit, over = metadata_of(LIMIT), metadata_of(LIMIT + 1)
    thread_id = post(api, "/threads").json()["thread_id"]
    for path, body in [
        ("/assistants", {"graph_id": "echo", "metadata": over}),
        ("/threads", {"metadata": over}),
        (f"/threads/{thread_id}/runs", {**RUN, "metadata": over}),
        ("/runs", {**RUN, "metadata": over}),
        ("/runs/wait", {**RUN, "metadata": over}),
        ("/runs/batch", [{**RUN, "metadata": over}]),
    ]:
        response = post(api, path, body)
        assert response.status_code == 422, path
        assert response.json() == {
            "detail": f"metadata is too large: {LIMIT + 1} bytes as JSON, over the limit of "
            f"{LIMIT} bytes (METADATA_MAX_BYTES)."
        }
    config = post(api, "/runs", {**RUN, "config": {"tags": ["t" * LIMIT]}})
    assert config.status_code == 422 and config.json()["detail"].startswith("config is too large")
    assert not Run.objects.exists() and not Assistant.objects.filter(owner=alice).exists()
    assert Thread.objects.filter(owner=alice).count() == 1

    assert post(api, "/threads", {"metadata": at_limit}).status_code == 200
    assert post(api, "/assistants", {"graph_id": "echo", "metadata": at_limit}).status_code == 200
    assert post(api, "/runs", {**RUN, "metadata": at_limit}).status_code == 200


def test_a_stream_create_with_too_much_metadata_is_422_before_the_stream(api) -> None:
    async def stream():
        return await send("post", "/runs/stream", api.raw_key, body={**RUN, "metadata": metadata_of(LIMIT + 1)})

    response = async_to_sync(stream)()
    assert response.status_code == 422 and b"metadata is too large" in response.content
    assert not Run.objects.exists()


def test_patches_may_not_grow_metadata_past_the_limit(api, alice) -> None:
    thread_id = post(api, "/threads", {"metadata": {"a": "x" * 40_000}}).json()["thread_id"]
    refused = api.patch(f"/threads/{thread_id}", {"metadata": {"b": "y" * 40_000}}, format="json")
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("metadata is too large: 80")
    assert set(Thread.objects.get(pk=thread_id).metadata) == {"a"}
    # Replacing a key keeps it under: merged size is what counts.
    assert api.patch(f"/threads/{thread_id}", {"metadata": {"a": "z"}}, format="json").status_code == 200

    big = {"graph_id": "echo", "metadata": {"a": "x" * 40_000}}
    assistant_id = post(api, "/assistants", big).json()["assistant_id"]
    refused = api.patch(
        f"/assistants/{assistant_id}", {"metadata": {"b": "y" * 40_000}}, format="json"
    )
    assert refused.status_code == 422 and "METADATA_MAX_BYTES" in refused.json()["detail"]
    assistant = Assistant.objects.get(pk=assistant_id)
    assert (assistant.version, set(assistant.metadata)) == (1, {"a"})
    too_big = api.patch(
        f"/assistants/{assistant_id}", {"metadata": metadata_of(LIMIT + 1)}, format="json"
    )
    assert too_big.status_code == 422


def test_the_metadata_limit_is_a_setting(api, settings) -> None:
    settings.METADATA_MAX_BYTES = 100
    assert post(api, "/threads", {"metadata": metadata_of(101)}).status_code == 422
    settings.METADATA_MAX_BYTES = 0  # no limit
    assert post(api, "/threads", {"metadata": metadata_of(LIMIT * 2)}).status_code == 200


# --- open streams --------------------------------------------------------------------------------


def test_open_run_streams_per_user_are_capped_and_freed_when_closed(
    api, bob_api, alice, bob, settings
) -> None:
    settings.STREAMS_MAX_PER_USER = 2
    thread = services.thread_create(owner=alice)
    run = services.run_create(owner=alice, body=RUN, thread_id=thread.pk)
    bobs_thread = services.thread_create(owner=bob)
    thread_stream = f"/threads/{thread.pk}/stream"
    join = f"/threads/{thread.pk}/runs/{run.pk}/stream"

    async def scenario():
        first = await send("get", thread_stream, api.raw_key)
        second = await send("get", join, api.raw_key)
        assert (first.status_code, second.status_code) == (200, 200)
        for method, path, body in [
            ("get", thread_stream, None),
            ("get", join, None),
            ("post", f"/threads/{thread.pk}/runs/stream", RUN),
            ("post", "/runs/stream", RUN),
        ]:
            refused = await send(method, path, api.raw_key, body=body)
            assert refused.status_code == 429, path
            assert refused.json() == {
                "detail": "You already have 2 open streams (STREAMS_MAX_PER_USER); close some first."
            }
        assert (
            await send("get", f"/threads/{bobs_thread.pk}/stream", bob_api.raw_key)
        ).status_code == 200
        # An execution's event stream counts too: the slots are the user's, not the API's.
        execution = await sync_to_async(execution_create)(
            owner=alice, type="agent", target_id="echo"
        )
        refused = await send("get", f"/api/v1/executions/{execution.pk}/events", api.raw_key)
        assert refused.status_code == 429
        first.close()  # what Django does when the client goes away
        third = await send("post", f"/threads/{thread.pk}/runs/stream", api.raw_key, body=RUN)
        assert third.status_code == 200
        assert (await send("get", thread_stream, api.raw_key)).status_code == 429
        # A stream that ends gives its slot back too.
        await execute_meanwhile(run.pk)
        assert await read_all(second)
        fourth = await send("get", thread_stream, api.raw_key)
        assert fourth.status_code == 200
        third.close()
        fourth.close()

    async_to_sync(scenario)()
    # The refused creates made no run.
    assert Run.objects.filter(owner=alice).count() == 2


def test_requests_refused_before_the_stream_hold_no_slot(api, alice, settings) -> None:
    settings.STREAMS_MAX_PER_USER = 1
    thread = services.thread_create(owner=alice)

    async def scenario():
        for _ in range(3):
            missing = await send(
                "post", f"/threads/{uuid.uuid4()}/runs/stream", api.raw_key, body=RUN
            )
            assert missing.status_code == 404
            bad = await send(
                "post",
                "/runs/stream",
                api.raw_key,
                body={**RUN, "context": {"a": 1}, "config": {"configurable": {"a": 1}}},
            )
            assert bad.status_code == 400
            unknown_thread = await send("get", f"/threads/{uuid.uuid4()}/stream", api.raw_key)
            assert unknown_thread.status_code == 404
        opened = await send("get", f"/threads/{thread.pk}/stream", api.raw_key)
        assert opened.status_code == 200
        opened.close()

    async_to_sync(scenario)()
