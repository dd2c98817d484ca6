"""Run and thread streams in-process: SSE bytes, ids and resumption, request options, and what the
worker stores for each stream mode (the graph runs here through the worker's entry point)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections
from django.test import AsyncClient, RequestFactory
from langchain_core.messages import AIMessage, AIMessageChunk

from project.realtime.sse import HEARTBEAT, sse_event
from runs import services, tasks
from runs.errors import Unprocessable
from runs.models import Run, RunEvent, RunStatus, Thread
from runs.stream_modes import MessagesV1, event_wanted
from runs.streams import (
    format_event_id,
    parse_last_event_id,
    parse_stream_mode_filter,
    parse_thread_stream_modes,
)
from tests.conftest import streams_watching, until

pytestmark = pytest.mark.django_db(transaction=True)

ALL_GRAPHS = {
    "echo": "runs.demo_graphs:echo",
    "hitl": "runs.demo_graphs:hitl",
    "steps": "runs.demo_graphs:steps",
    "chat": "runs.demo_graphs:chat",
    "nested": "runs.demo_graphs:nested",
}


# --- framing ---------------------------------------------------------------------------------------


def test_frames_are_byte_identical_to_the_real_servers() -> None:
    run_id = "01a20786-0000-7000-8000-000000000000"
    assert sse_event("metadata", {"run_id": run_id, "attempt": 1}) == (
        b'event: metadata\r\ndata: {"run_id":"' + run_id.encode() + b'","attempt":1}\r\n\r\n'
    )
    assert sse_event("values", {"messages": [{"role": "user", "content": "hi"}]}) == (
        b'event: values\r\ndata: {"messages":[{"role":"user","content":"hi"}]}\r\n\r\n'
    )
    assert sse_event("error", {"error": "ValueError", "message": "boom requested"}) == (
        b'event: error\r\ndata: {"error":"ValueError","message":"boom requested"}\r\n\r\n'
    )
    assert HEARTBEAT == b": heartbeat\r\n\r\n"
    # The id comes on the line after data.
    assert sse_event("values", {}, event_id=format_event_id(42)) == (
        b"event: values\r\ndata: {}\r\nid: 0000000000000000042\r\n\r\n"
    )


def test_event_ids_compare_as_strings_like_the_real_servers() -> None:
    ids = [format_event_id(n) for n in (1, 9, 10, 99, 100, 12345678901234)]
    assert ids == sorted(ids)
    assert len({len(i) for i in ids}) == 1
    # The real server's "everything" sentinels sort before any id, and parse as "from the start".
    for sentinel in ("0", "-1", "-"):
        assert all(sentinel < i for i in ids)
        assert parse_last_event_id(sentinel) == 0
    assert parse_last_event_id(ids[3]) == 99
    assert parse_last_event_id("99") == 99
    assert parse_last_event_id(None) is None
    for bad in ("1795422558487-0", "abc", "1" * 20):
        with pytest.raises(Unprocessable, match="Invalid Last-Event-ID"):
            parse_last_event_id(bad)


def test_join_stream_mode_filter_reads_the_first_parameter_and_json_arrays() -> None:
    factory = RequestFactory()

    def parse(query: str):
        return parse_stream_mode_filter(factory.get("/x" + query))

    assert parse("") is None
    assert parse("?stream_mode=") is None  # what the SDK sends when no mode is given
    assert parse("?stream_mode=values") == {"values"}
    assert parse('?stream_mode=["values","updates"]') == {"values", "updates"}
    assert parse("?stream_mode=updates&stream_mode=values") == {"updates"}
    with pytest.raises(Unprocessable, match="Invalid stream_mode"):
        parse("?stream_mode=nope")
    assert parse_thread_stream_modes(factory.get("/x")) == {"run_modes"}
    assert parse_thread_stream_modes(factory.get("/x?stream_modes=lifecycle,state_update")) == {
        "lifecycle", "state_update",
    }
    assert parse_thread_stream_modes(factory.get("/x?stream_mode=lifecycle")) == {"lifecycle"}
    with pytest.raises(Unprocessable, match="Invalid stream_modes"):
        parse_thread_stream_modes(factory.get("/x?stream_modes=values"))


def test_which_events_a_mode_filter_lets_through() -> None:
    assert event_wanted("values", frozenset({"values"}))
    assert event_wanted("values|child:1", frozenset({"values"}))
    assert not event_wanted("updates", frozenset({"values"}))
    assert event_wanted("messages", frozenset({"messages-tuple"}))
    assert not event_wanted("messages", frozenset({"messages"}))
    assert event_wanted("messages/partial", frozenset({"messages"}))
    for always in ("metadata", "error"):
        assert event_wanted(always, frozenset({"custom"}))
    assert event_wanted("anything", None)


def test_messages_mode_sends_metadata_once_then_the_message_so_far() -> None:
    stream = MessagesV1()
    meta = {"langgraph_node": "chat"}
    first = stream.events((AIMessageChunk(content="echo:", id="m1"), meta))
    second = stream.events((AIMessageChunk(content=" hi", id="m1"), meta))
    whole = stream.events((AIMessage(content="done", id="m2"), meta))

    assert [name for name, _ in first] == ["messages/metadata", "messages/partial"]
    assert first[0][1] == {"m1": {"metadata": meta}}
    assert first[1][1][0]["content"] == "echo:" and first[1][1][0]["type"] == "ai"
    assert second == [("messages/partial", [second[0][1][0]])]
    assert second[0][1][0]["content"] == "echo: hi"
    assert [name for name, _ in whole] == ["messages/metadata", "messages/complete"]
    assert whole[1][1][0]["content"] == "done"


# --- the worker stores every requested mode ---------------------------------------------------------


@pytest.fixture
def run_here(settings, alice):
    """Create a run and execute it in this process through the worker's entry point."""
    settings.RUNS_GRAPHS = ALL_GRAPHS

    def run(graph: str, graph_input: dict | None = None, **body) -> Run:
        thread = services.thread_create(owner=alice)
        created = services.run_create(
            owner=alice, body={"assistant_id": graph, "input": graph_input, **body}, thread_id=thread.pk
        )
        tasks.run_execute(str(created.pk))
        return Run.objects.get(pk=created.pk)

    yield run
    # The worker's sync calls ran in asgiref's shared thread: close its connection.
    asyncio.run(sync_to_async(connections.close_all)())


def stored(run: Run, *, thread_only: bool = False) -> list[tuple[str, object]]:
    return [
        (event.event, event.payload)
        for event in RunEvent.objects.filter(run=run, thread_only=thread_only).order_by("seq")
    ]


def names(run: Run) -> list[str]:
    return [name for name, _ in stored(run)]


def test_every_requested_mode_is_stored_in_order_after_a_metadata_event(run_here) -> None:
    run = run_here(
        "steps", {"topic": "t"}, stream_mode=["values", "updates", "custom", "tasks", "checkpoints", "debug"]
    )
    events = stored(run)
    assert events[0] == ("metadata", {"run_id": str(run.pk), "attempt": 1})
    counts = {name: names(run).count(name) for name in set(names(run))}
    assert counts == {
        "metadata": 1, "values": 5, "updates": 4, "custom": 8, "tasks": 8, "checkpoints": 6,
        "debug": 14,
    }
    assert ("custom", {"step": 1, "total": 4, "name": "plan", "status": "started"}) in events
    assert ("updates", {"plan": {"log": ["plan: t"]}}) in events
    debug_types = [data["type"] for name, data in events if name == "debug"]
    assert set(debug_types) == {"checkpoint", "task", "task_result"}
    assert [data for name, data in events if name == "values"][-1] == run.result
    seqs = list(RunEvent.objects.filter(run=run).order_by("id").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    # The thread stream's end-of-run marker, stored with the final status.
    assert stored(run, thread_only=True) == [("metadata", {"status": "run_done", "run_id": str(run.pk)})]


def test_messages_modes_from_a_streaming_chat_model(run_here) -> None:
    chat = {"messages": [{"role": "user", "content": "hi there"}]}
    tuples = run_here("chat", chat, stream_mode="messages-tuple")
    chunks = [data for name, data in stored(tuples) if name == "messages"]
    assert [chunk["content"] for chunk, _ in chunks] == ["echo:", " hi", " there", ""]
    assert {chunk["type"] for chunk, _ in chunks} == {"AIMessageChunk"}
    assert all(meta["langgraph_node"] == "chat" for _, meta in chunks)

    v1 = run_here("chat", chat, stream_mode="messages")
    assert names(v1) == ["metadata", "messages/metadata"] + ["messages/partial"] * 4
    partials = [data[0]["content"] for name, data in stored(v1) if name == "messages/partial"]
    assert partials == ["echo:", "echo: hi", "echo: hi there", "echo: hi there"]

    # A graph without an LLM streams nothing in the messages modes (as observed on the real server).
    silent = run_here("echo", {"messages": [{"role": "user", "content": "x"}]}, stream_mode=["messages"])
    assert names(silent) == ["metadata"]


def test_subgraph_events_are_named_mode_pipe_namespace(run_here) -> None:
    run = run_here("nested", {"topic": "x"}, stream_mode=["updates", "custom"], stream_subgraphs=True)
    events = stored(run)
    assert [name.split("|")[0] for name, _ in events] == ["metadata", "updates", "custom", "updates", "updates"]
    namespaced = [name for name, _ in events if "|" in name]
    assert len(namespaced) == 2 and all(name.split("|")[1].startswith("child:") for name in namespaced)
    assert (namespaced[0].split("|")[0], events[2][1]) == ("custom", {"inner": "x"})
    # Without stream_subgraphs, LangGraph streams only the parent graph's own chunks.
    without = run_here("nested", {"topic": "x"}, stream_mode=["updates", "custom"])
    assert names(without) == ["metadata", "updates", "updates"]


def test_events_mode_streams_astream_events_v2_beside_other_modes(run_here) -> None:
    run = run_here("echo", {"messages": [{"role": "user", "content": "x"}]}, stream_mode=["events", "updates"])
    events = stored(run)
    kinds = [data["event"] for name, data in events if name == "events"]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    assert {"on_chain_stream", "on_chain_end"} <= set(kinds)
    assert ("updates", {"echo": {"messages": [{"role": "assistant", "content": "echo: x"}]}}) in events
    assert run.status == RunStatus.SUCCESS


def test_a_failed_run_stores_an_error_event_with_its_final_status(run_here) -> None:
    run = run_here("echo", {"messages": [{"role": "user", "content": "fail"}]})
    assert run.status == RunStatus.ERROR
    assert stored(run)[-1] == ("error", {"error": "ValueError", "message": "boom requested"})


def test_event_data_is_kept_byte_for_byte(run_here) -> None:
    # Key order as produced (PostgreSQL's jsonb would sort {"role","content"} otherwise).
    run = run_here("echo", {"messages": [{"role": "user", "content": "hi"}]})
    first_values = RunEvent.objects.filter(run=run, event="values").order_by("seq").first()
    assert first_values.data == '{"messages":[{"role":"user","content":"hi"}]}'


# --- views in-process ------------------------------------------------------------------------------


def read(method: str, path: str, *, key: str | None, timeout: float = 10.0, limit: int | None = None, **kwargs):
    """(status, response, body bytes) of a request; ``limit`` stops after that many frames."""
    headers = dict(kwargs.pop("headers", {}))
    if key:
        headers["x-api-key"] = key

    async def go():
        client = AsyncClient()
        response = await getattr(client, method)(path, headers=headers, **kwargs)
        if not response.streaming:
            return response.status_code, response, response.content
        body = b""
        deadline = time.monotonic() + timeout
        chunks = aiter(response.streaming_content)
        while limit is None or body.count(b"\r\n\r\n") < limit:
            # Bounded per chunk too: a stream that goes silent fails the test instead of hanging it.
            try:
                chunk = await asyncio.wait_for(anext(chunks), max(0.01, deadline - time.monotonic()))
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise AssertionError(f"stream did not end within {timeout} s; got {body!r}") from None
            body += chunk
        return response.status_code, response, body

    return async_to_sync(go)()


def frames(body: bytes) -> list[bytes]:
    return [frame + b"\r\n\r\n" for frame in body.split(b"\r\n\r\n") if frame]


def test_join_replays_stored_events_exactly_after_last_event_id(run_here, api) -> None:
    run = run_here("steps", {"topic": "t"}, stream_mode=["values", "custom"], stream_resumable=True)
    events = list(RunEvent.objects.filter(run=run, thread_only=False).order_by("id"))
    path = f"/threads/{run.thread_id}/runs/{run.pk}/stream"

    status, response, everything = read("get", path, key=api.raw_key, headers={"Last-Event-ID": "-1"})
    assert status == 200 and response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert frames(everything) == [
        b"event: " + e.event.encode() + b"\r\ndata: " + e.data.encode()
        + b"\r\nid: " + format_event_id(e.id).encode() + b"\r\n\r\n"
        for e in events
    ]
    middle = format_event_id(events[5].id)
    _, _, rest = read("get", path, key=api.raw_key, headers={"Last-Event-ID": middle})
    assert frames(rest) == frames(everything)[6:]
    # A finished run joined without Last-Event-ID: an empty 200, as on the real server.
    status, _, empty = read("get", path, key=api.raw_key)
    assert (status, empty) == (200, b"")
    _, _, only_custom = read(
        "get", path + "?stream_mode=custom", key=api.raw_key, headers={"Last-Event-ID": "0"}
    )
    assert [f.split(b"\r\n")[0] for f in frames(only_custom)] == [b"event: metadata"] + [b"event: custom"] * 8


def test_join_of_a_run_that_is_not_resumable_has_no_ids(run_here, api) -> None:
    run = run_here("echo", {"messages": [{"role": "user", "content": "hi"}]})
    _, _, body = read(
        "get", f"/threads/{run.thread_id}/runs/{run.pk}/stream", key=api.raw_key,
        headers={"Last-Event-ID": "0"},
    )
    assert body == (
        b'event: metadata\r\ndata: {"run_id":"' + str(run.pk).encode() + b'","attempt":1}\r\n\r\n'
        b'event: values\r\ndata: {"messages":[{"role":"user","content":"hi"}]}\r\n\r\n'
        b'event: values\r\ndata: {"messages":[{"role":"user","content":"hi"},'
        b'{"role":"assistant","content":"echo: hi"}]}\r\n\r\n'
    )


def test_join_of_an_unknown_run_is_a_200_with_an_error_event(api, alice) -> None:
    thread = services.thread_create(owner=alice)
    status, _, body = read("get", f"/threads/{thread.pk}/runs/{uuid.uuid4()}/stream", key=api.raw_key)
    assert status == 200
    assert body == b'event: error\r\ndata: {"error":"HTTPException","message":"404: Run not found"}\r\n\r\n'


def test_thread_stream_replays_every_run_with_ids_and_run_done(run_here, api, alice) -> None:
    first = run_here("echo", {"messages": [{"role": "user", "content": "a"}]})
    thread_id = first.thread_id
    second = services.run_create(
        owner=alice, body={"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "b"}]}},
        thread_id=thread_id,
    )
    tasks.run_execute(str(second.pk))

    _, _, body = read("get", f"/threads/{thread_id}/stream", key=api.raw_key,
                      headers={"Last-Event-ID": "-"}, limit=8)
    got = frames(body)
    assert [f.split(b"\r\n")[0] for f in got] == [
        b"event: metadata", b"event: values", b"event: values", b"event: metadata",
    ] * 2
    assert got[3].split(b"\r\n")[1] == (
        b'data: {"status":"run_done","run_id":"' + str(first.pk).encode() + b'"}'
    )
    ids = [f.split(b"\r\n")[2] for f in got]
    assert all(i.startswith(b"id: ") for i in ids) and ids == sorted(ids)

    _, _, lifecycle = read("get", f"/threads/{thread_id}/stream?stream_modes=lifecycle",
                           key=api.raw_key, headers={"Last-Event-ID": "-"}, limit=4)
    assert [f.split(b"\r\n")[0] for f in frames(lifecycle)] == [b"event: metadata"] * 4


def test_errors_before_the_stream_starts_are_json(api, alice) -> None:
    thread = services.thread_create(owner=alice)
    body = {"assistant_id": "echo", "input": {}}
    status, _, content = read("post", f"/threads/{uuid.uuid4()}/runs/stream", key=api.raw_key,
                              data=body, content_type="application/json")
    assert (status, content) == (404, b'{"detail": "Thread or assistant not found."}')
    status, _, content = read("post", f"/threads/{thread.pk}/runs/stream", key=None,
                              data=body, content_type="application/json")
    assert status == 401
    status, _, content = read("post", f"/threads/{thread.pk}/runs/stream", key="nope",
                              data=body, content_type="application/json")
    assert (status, content) == (401, b'{"detail": "Invalid or revoked API key."}')
    status, _, content = read("post", f"/threads/{thread.pk}/runs/stream", key=api.raw_key,
                              data=b"{nope", content_type="text/plain")
    assert (status, content) == (422, b'{"detail": "Invalid JSON in request body"}')
    status, _, content = read("post", f"/threads/{thread.pk}/runs/stream", key=api.raw_key,
                              data={**body, "stream_mode": ["tools"]}, content_type="application/json")
    assert status == 422 and b"tools" in content
    status, _, content = read("get", f"/threads/{thread.pk}/runs/stream", key=api.raw_key)
    assert (status, content) == (405, b'{"detail": "Method Not Allowed"}')
    status, _, content = read("get", "/threads/not-a-uuid/stream", key=api.raw_key)
    assert (status, content) == (422, b'{"detail": "Invalid thread ID: must be a UUID"}')
    status, _, content = read("get", f"/threads/{thread.pk}/stream", key=api.raw_key,
                              headers={"Last-Event-ID": "x"})
    assert status == 422 and b"Invalid Last-Event-ID" in content


def test_other_users_cannot_stream_a_thread_or_join_its_runs(run_here, bob_api) -> None:
    run = run_here("echo", {"messages": [{"role": "user", "content": "secret"}]})
    status, _, content = read("get", f"/threads/{run.thread_id}/stream", key=bob_api.raw_key)
    assert status == 404
    _, _, body = read("get", f"/threads/{run.thread_id}/runs/{run.pk}/stream", key=bob_api.raw_key,
                      headers={"Last-Event-ID": "0"})
    assert b"secret" not in body and b"404: Run not found" in body


def test_a_session_post_needs_the_csrf_token(alice, client) -> None:
    thread = services.thread_create(owner=alice)
    client.force_login(alice)
    session = client.cookies["sessionid"].value

    async def post(headers: dict) -> tuple[int, bytes]:
        async_client = AsyncClient(enforce_csrf_checks=True)
        async_client.cookies["sessionid"] = session
        response = await async_client.post(
            f"/threads/{thread.pk}/runs/stream", {"assistant_id": "echo"},
            content_type="application/json", headers=headers,
        )
        return response.status_code, response.content

    status, content = async_to_sync(post)({})
    assert status == 403 and b"CSRF Failed" in content
    token = "t" * 32

    async def post_with_token() -> tuple[int, str]:
        async_client = AsyncClient(enforce_csrf_checks=True)
        async_client.cookies["sessionid"] = session
        async_client.cookies["csrftoken"] = token
        response = await async_client.post(
            f"/threads/{thread.pk}/runs/stream", {"assistant_id": "echo", "input": {}},
            content_type="application/json", headers={"X-CSRFToken": token},
        )
        return response.status_code, response["Content-Type"]

    assert async_to_sync(post_with_token)() == (200, "text/event-stream; charset=utf-8")


def test_stream_ends_when_the_run_is_deleted(api, alice) -> None:
    thread = services.thread_create(owner=alice)
    run = services.run_create(owner=alice, body={"assistant_id": "echo", "input": {}}, thread_id=thread.pk)

    async def scenario() -> bytes:
        async def delete_soon() -> None:
            await until(streams_watching, message="the stream to start")
            await sync_to_async(services.thread_delete)(thread=thread)

        deleter = asyncio.ensure_future(delete_soon())
        response = await AsyncClient().get(
            f"/threads/{thread.pk}/runs/{run.pk}/stream", headers={"x-api-key": api.raw_key}
        )
        body = b"".join([chunk async for chunk in response.streaming_content])
        await deleter
        return body

    started = time.monotonic()
    assert async_to_sync(scenario)() == b""
    assert time.monotonic() - started < 3
    assert not Thread.objects.filter(pk=thread.pk).exists()


def test_thread_stream_of_a_thread_without_runs_ends_when_it_is_deleted(api, alice) -> None:
    thread = services.thread_create(owner=alice)

    async def scenario() -> bytes:
        async def delete_soon() -> None:
            await until(streams_watching, message="the stream to start")
            await sync_to_async(services.thread_delete)(thread=thread)

        deleter = asyncio.ensure_future(delete_soon())
        response = await AsyncClient().get(f"/threads/{thread.pk}/stream", headers={"x-api-key": api.raw_key})
        body = b"".join([chunk async for chunk in response.streaming_content])
        await deleter
        return body

    started = time.monotonic()
    assert async_to_sync(scenario)() == b""
    assert time.monotonic() - started < 3


def test_an_idle_stream_sends_heartbeats_without_reading_the_database_again(api, alice, monkeypatch) -> None:
    import runs.streams as run_streams

    thread = services.thread_create(owner=alice)
    run = services.run_create(owner=alice, body={"assistant_id": "echo", "input": {}}, thread_id=thread.pk)
    monkeypatch.setattr(run_streams, "HEARTBEAT_INTERVAL", 0.1)
    reads = []
    original = run_streams._run_status_and_events
    monkeypatch.setattr(
        run_streams, "_run_status_and_events", lambda *args: reads.append(args) or original(*args)
    )

    _, _, body = read("get", f"/threads/{thread.pk}/runs/{run.pk}/stream", key=api.raw_key, limit=5)
    assert body == HEARTBEAT * 5
    # The first read, and one more when the hub first sights the run; none per heartbeat.
    assert len(reads) <= 2
