"""The official langgraph-sdk (async and sync clients) against a real server and worker cluster."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from tests.conftest import wait_for

pytestmark = pytest.mark.live

ECHO_ASSISTANT_ID = "046b5dc7-2108-582c-9c6c-31d556d138f0"


def user_message(content: str) -> dict:
    return {"role": "user", "content": content}


def echo_input(content: str, sleep: float | None = None) -> dict:
    body: dict = {"messages": [user_message(content)]}
    if sleep is not None:
        body["sleep"] = sleep
    return body


@pytest.fixture
def client(live):
    return get_sync_client(url=live.url, api_key=live.api_key)


@pytest.fixture
def other_client(live):
    return get_sync_client(url=live.url, api_key=live.other_api_key)


def test_assistants_crud_search_and_versions_async(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        other = get_client(url=live.url, api_key=live.other_api_key)
        found = await client.assistants.search(graph_id="echo")
        system = next(a for a in found if a["metadata"].get("created_by") == "system")
        assert system["assistant_id"] == ECHO_ASSISTANT_ID
        assert system["name"] == "echo" and system["version"] == 1

        created = await client.assistants.create(
            graph_id="echo", name="mine", metadata={"team": "a"}, config={"tags": ["x"]}
        )
        assistant_id = created["assistant_id"]
        assert uuid.UUID(assistant_id).version == 4
        assert (await client.assistants.get(assistant_id))["name"] == "mine"

        updated = await client.assistants.update(assistant_id, name="renamed", metadata={"k": 1})
        assert updated["version"] == 2
        assert updated["metadata"] == {"team": "a", "k": 1}
        versions = await client.assistants.get_versions(assistant_id)
        assert [v["version"] for v in versions] == [2, 1]
        back = await client.assistants.set_latest(assistant_id, 1)
        assert back["name"] == "mine" and back["version"] == 1

        by_metadata = await client.assistants.search(metadata={"team": "a"})
        assert [a["assistant_id"] for a in by_metadata] == [assistant_id]
        assert await client.assistants.count(graph_id="echo") == 2
        schemas = await client.assistants.get_schemas(assistant_id)
        assert "messages" in schemas["input_schema"]["properties"]
        graph = await client.assistants.get_graph(assistant_id)
        assert {node["id"] for node in graph["nodes"]} >= {"echo", "fail"}

        # Another user neither sees nor can touch it, but sees the system assistants.
        with pytest.raises(NotFoundError):
            await other.assistants.get(assistant_id)
        assert await other.assistants.count(graph_id="echo") == 1

        await client.assistants.delete(assistant_id)
        with pytest.raises(NotFoundError):
            await client.assistants.get(assistant_id)
        with pytest.raises(NotFoundError) as missing_graph:
            await client.assistants.create(graph_id="nope")
        assert "Graph 'nope' not found" in str(missing_graph.value)

    asyncio.run(scenario())


def test_threads_crud_search_and_ownership(client, other_client, live) -> None:
    thread = client.threads.create(metadata={"project": "p1"})
    thread_id = thread["thread_id"]
    assert thread["status"] == "idle" and thread["values"] is None
    assert uuid.UUID(thread_id).version == 7

    with pytest.raises(ConflictError):
        client.threads.create(thread_id=thread_id)
    assert client.threads.create(thread_id=thread_id, if_exists="do_nothing")["thread_id"] == thread_id

    updated = client.threads.update(thread_id, metadata={"stage": "b"})
    assert updated["metadata"] == {"project": "p1", "stage": "b"}
    client.threads.create(metadata={"project": "p2"})

    response = httpx.post(
        f"{live.url}/threads/search",
        json={"metadata": {"project": "p1"}, "limit": 10},
        headers={"x-api-key": live.api_key},
    )
    assert response.status_code == 200
    assert response.headers["x-pagination-total"] == "1"
    assert [t["thread_id"] for t in response.json()] == [thread_id]
    assert client.threads.count() == 2
    assert len(client.threads.search(status="idle", limit=1)) == 1

    with pytest.raises(NotFoundError):
        other_client.threads.get(thread_id)
    assert other_client.threads.count() == 0

    client.threads.delete(thread_id)
    with pytest.raises(NotFoundError) as missing:
        client.threads.get(thread_id)
    assert missing.value.body == {"detail": f"Thread with ID {thread_id} not found"}


def test_wait_state_history_update_and_copy(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    result = client.runs.wait(thread_id, "echo", input=echo_input("hi"))
    assert result == {
        "messages": [user_message("hi"), {"role": "assistant", "content": "echo: hi"}]
    }
    thread = client.threads.get(thread_id)
    assert thread["status"] == "idle"
    assert thread["metadata"]["graph_id"] == "echo"
    assert thread["values"] == result and thread["error"] is None and thread["interrupts"] == {}

    state = client.threads.get_state(thread_id)
    assert state["values"] == result and state["next"] == []
    assert state["metadata"]["graph_id"] == "echo"
    history = client.threads.get_history(thread_id, limit=10)
    assert [h["next"] for h in history] == [[], ["echo"], ["__start__"]]
    first = history[1]
    assert client.threads.get_state(thread_id, checkpoint_id=first["checkpoint_id"])["next"] == ["echo"]

    update = client.threads.update_state(
        thread_id, {"messages": [{"role": "assistant", "content": "added"}]}, as_node="echo"
    )
    assert update["checkpoint"]["thread_id"] == thread_id
    state = client.threads.get_state(thread_id)
    assert state["values"]["messages"][-1]["content"] == "added"
    assert len(client.threads.get_history(thread_id, limit=10)) == 4

    copy = client.threads.copy(thread_id)
    assert copy["thread_id"] != thread_id
    # As the real server answers it: the copy's values are in its state, not in this answer.
    assert set(copy) == {"thread_id", "created_at", "updated_at", "state_updated_at", "metadata", "status", "config"}
    assert client.threads.get_state(copy["thread_id"])["values"] == state["values"]

    # A second turn runs on the same thread state.
    second = client.runs.wait(thread_id, "echo", input=echo_input("again"))
    assert [m["content"] for m in second["messages"]] == ["hi", "echo: hi", "added", "again", "echo: again"]


def test_background_run_get_list_join_delete(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    # A second's sleep: the thread is still busy when it is read (workers pick runs up in ms).
    run = client.runs.create(thread_id, "echo", input=echo_input("bg", sleep=1), metadata={"m": 1})
    assert run["status"] == "pending" and run["multitask_strategy"] == "enqueue"
    assert run["kwargs"]["stream_mode"] == ["values"]
    assert client.threads.get(thread_id)["status"] == "busy"
    joined = client.runs.join(thread_id, run["run_id"])
    assert joined["messages"][-1]["content"] == "echo: bg"
    fetched = client.runs.get(thread_id, run["run_id"])
    # As the real server: the assistant's and the thread's metadata, the request's, the ids.
    assert fetched["status"] == "success" and fetched["metadata"] == {
        "created_by": "system", "m": 1, "graph_id": "echo", "assistant_id": ECHO_ASSISTANT_ID,
    }
    assert run["metadata"] == fetched["metadata"]
    assert [r["run_id"] for r in client.runs.list(thread_id)] == [run["run_id"]]
    assert client.runs.list(thread_id, status="error") == []
    client.runs.delete(thread_id, run["run_id"])
    with pytest.raises(NotFoundError):
        client.runs.get(thread_id, run["run_id"])


def test_graph_error_surfaces_in_wait_and_thread(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    with pytest.raises(Exception, match="ValueError: boom requested"):
        client.runs.wait(thread_id, "echo", input=echo_input("fail"))
    raw = client.runs.wait(thread_id, "echo", input=echo_input("fail"), raise_error=False)
    assert raw == {"__error__": {"error": "ValueError", "message": "boom requested"}}
    thread = client.threads.get(thread_id)
    assert thread["status"] == "error"
    assert thread["error"] == {"error": "ValueError", "message": "boom requested"}
    assert {r["status"] for r in client.runs.list(thread_id)} == {"error"}


def test_hitl_interrupt_and_resume(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    paused = client.runs.wait(thread_id, "hitl", input={"messages": [user_message("deploy?")]})
    assert paused["__interrupt__"][0]["value"] == {"question": "approve?"}
    assert len(paused["__interrupt__"][0]["id"]) == 32
    thread = client.threads.get(thread_id)
    assert thread["status"] == "interrupted"
    [(_task_id, interrupts)] = thread["interrupts"].items()
    assert interrupts[0]["value"] == {"question": "approve?"}
    state = client.threads.get_state(thread_id)
    assert state["next"] == ["ask"] and state["interrupts"][0]["value"] == {"question": "approve?"}
    assert client.runs.list(thread_id)[0]["status"] == "success"

    resumed = client.runs.wait(thread_id, "hitl", command={"resume": "yes"})
    assert resumed["approved"] == "yes"
    assert client.threads.get(thread_id)["status"] == "idle"


def test_stateless_runs_and_batch(client, live) -> None:
    result = client.runs.wait(None, "echo", input=echo_input("alone"))
    assert result["messages"][-1]["content"] == "echo: alone"
    assert client.threads.count() == 0  # the temporary thread is gone

    kept = httpx.post(
        f"{live.url}/runs/wait",
        json={"assistant_id": "echo", "input": echo_input("keep"), "on_completion": "keep"},
        headers={"x-api-key": live.api_key},
    )
    thread_id = kept.headers["location"].split("/")[2]
    assert kept.json()["messages"][-1]["content"] == "echo: keep"
    assert client.threads.get(thread_id)["values"] == kept.json()

    batch = client.runs.create_batch(
        [{"assistant_id": "echo", "input": echo_input(f"b{i}")} for i in range(3)]
    )
    assert len(batch) == 3 and len({r["thread_id"] for r in batch}) == 3
    # A stateless run's metadata: the assistant's and its id, as on the real server.
    assert batch[0]["metadata"] == {"created_by": "system", "assistant_id": ECHO_ASSISTANT_ID}
    # Background stateless runs delete their temporary threads when they end.
    wait_for(lambda: client.threads.count() == 1, timeout=20, message="temporary threads deleted")


def test_typed_errors(client, live) -> None:
    with pytest.raises(NotFoundError) as missing_thread:
        client.runs.create(str(uuid.uuid4()), "echo", input=echo_input("x"))
    assert missing_thread.value.body == {"detail": "Thread or assistant not found."}
    thread_id = client.threads.create()["thread_id"]
    with pytest.raises(UnprocessableEntityError) as bad_assistant:
        client.runs.create(thread_id, "nope", input={})
    assert "One of the registered graphs: echo" in bad_assistant.value.body["detail"]
    with pytest.raises(NotFoundError):
        client.runs.create(thread_id, str(uuid.uuid4()), input={})

    headers = {"x-api-key": live.api_key}
    bad_uuid = httpx.get(f"{live.url}/threads/not-a-uuid", headers=headers)
    assert (bad_uuid.status_code, bad_uuid.json()) == (422, {"detail": "Invalid thread ID: must be a UUID"})
    missing_field = httpx.post(f"{live.url}/threads/{thread_id}/runs", json={"input": {}}, headers=headers)
    assert missing_field.status_code == 422
    assert missing_field.json()["detail"].startswith('"assistant_id" is a required property\n\nFailed validating')
    not_json = httpx.post(f"{live.url}/threads", content=b"{nope", headers=headers)
    assert not_json.json() == {"detail": "Invalid JSON in request body"}
    as_text = httpx.post(
        f"{live.url}/threads",
        content=b'{"metadata": {"a": 1}, "foo": 1}',
        headers={**headers, "content-type": "text/plain"},
    )
    assert as_text.status_code == 200 and as_text.json()["metadata"] == {"a": 1}
    # The created run is usable through the thread's other endpoints via if_not_exists=create.
    new_id = str(uuid.uuid4())
    run = client.runs.create(new_id, "echo", input=echo_input("c"), if_not_exists="create")
    assert run["thread_id"] == new_id


def test_multitask_reject_and_enqueue(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    first = client.runs.create(thread_id, "echo", input=echo_input("first", sleep=1.5))
    with pytest.raises(ConflictError) as rejected:
        client.runs.create(thread_id, "echo", input=echo_input("x"), multitask_strategy="reject")
    assert "already running a task" in rejected.value.body["detail"]
    with pytest.raises(httpx.HTTPStatusError) as rejected_wait:
        client.runs.wait(thread_id, "echo", input=echo_input("x"), multitask_strategy="reject")
    assert rejected_wait.value.response.status_code == 409

    second = client.runs.create(thread_id, "echo", input=echo_input("second"))
    assert client.runs.get(thread_id, second["run_id"])["status"] == "pending"
    result = client.runs.join(thread_id, second["run_id"])
    assert [m["content"] for m in result["messages"]] == ["first", "echo: first", "second", "echo: second"]
    assert client.runs.get(thread_id, first["run_id"])["status"] == "success"
    assert client.threads.get(thread_id)["status"] == "idle"


def _wait_running(client, thread_id: str, run_id: str) -> None:
    wait_for(lambda: client.runs.get(thread_id, run_id)["status"] == "running", timeout=20,
             message="run running")


def test_multitask_interrupt_keeps_input_checkpoint(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    first = client.runs.create(thread_id, "echo", input=echo_input("first", sleep=5))
    _wait_running(client, thread_id, first["run_id"])
    second = client.runs.create(
        thread_id, "echo", input=echo_input("second"), multitask_strategy="interrupt"
    )
    result = client.runs.join(thread_id, second["run_id"])
    assert [m["content"] for m in result["messages"]] == ["first", "second", "echo: second"]
    assert client.runs.get(thread_id, first["run_id"])["status"] == "interrupted"


def test_multitask_rollback_deletes_run_and_checkpoints(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    first = client.runs.create(thread_id, "echo", input=echo_input("first", sleep=5))
    _wait_running(client, thread_id, first["run_id"])
    started = time.monotonic()
    second = client.runs.create(
        thread_id, "echo", input=echo_input("second"), multitask_strategy="rollback"
    )
    result = client.runs.join(thread_id, second["run_id"])
    assert time.monotonic() - started < 3
    assert [m["content"] for m in result["messages"]] == ["second", "echo: second"]
    with pytest.raises(NotFoundError):
        client.runs.get(thread_id, first["run_id"])
    history = client.threads.get_history(thread_id, limit=20)
    assert {h["metadata"]["run_id"] for h in history} == {second["run_id"]}


def test_cancel_running_run_interrupt_within_a_second(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "echo", input=echo_input("long", sleep=30))
    _wait_running(client, thread_id, run["run_id"])
    started = time.monotonic()
    client.runs.cancel(thread_id, run["run_id"], wait=True)
    assert time.monotonic() - started < 1.5
    assert client.runs.get(thread_id, run["run_id"])["status"] == "interrupted"
    thread = client.threads.get(thread_id)
    assert thread["status"] == "interrupted"
    assert client.threads.get_state(thread_id)["next"] == ["echo"]
    with pytest.raises(NotFoundError) as again:
        client.runs.cancel(thread_id, run["run_id"])
    assert "No matching runs to cancel" in again.value.body["detail"]


def test_cancel_rollback_and_pending_and_bulk(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    running = client.runs.create(thread_id, "echo", input=echo_input("long", sleep=30))
    _wait_running(client, thread_id, running["run_id"])
    pending = client.runs.create(thread_id, "echo", input=echo_input("queued", sleep=30))
    client.runs.cancel(thread_id, pending["run_id"])
    assert client.runs.get(thread_id, pending["run_id"])["status"] == "interrupted"
    assert client.threads.get(thread_id)["status"] == "busy"

    client.runs.cancel(thread_id, running["run_id"], wait=True, action="rollback")
    with pytest.raises(NotFoundError):
        client.runs.get(thread_id, running["run_id"])
    assert client.threads.get_history(thread_id) == []
    assert client.threads.get(thread_id)["status"] == "idle"

    with pytest.raises(NotFoundError) as unknown:
        client.runs.cancel(thread_id, str(uuid.uuid4()))
    assert unknown.value.body == {"detail": "No runs found to cancel."}

    other_thread = client.threads.create()["thread_id"]
    run = client.runs.create(other_thread, "echo", input=echo_input("bulk", sleep=30))
    _wait_running(client, other_thread, run["run_id"])
    client.runs.cancel_many(thread_id=other_thread, run_ids=[run["run_id"]])
    wait_for(lambda: client.runs.get(other_thread, run["run_id"])["status"] == "interrupted",
             timeout=5, message="bulk-cancelled run interrupted")


def test_every_stream_chunk_is_stored_as_a_run_event(client) -> None:
    from runs.models import RunEvent

    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(
        thread_id, "steps", input={"topic": "t"}, stream_mode=["values", "updates", "custom"]
    )
    result = client.runs.join(thread_id, run["run_id"])
    assert result["log"] == ["plan: t", "research: t", "draft: t", "review: t"]
    rows = RunEvent.objects.filter(run_id=run["run_id"], thread_only=False).order_by("seq")
    events = [(row.seq, row.event, row.payload) for row in rows]
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    names = [event for _, event, _ in events]
    assert names.count("custom") == 8 and names.count("updates") == 4 and names.count("values") == 5
    assert events[0][1:] == ("metadata", {"run_id": run["run_id"], "attempt": 1})
    assert events[1][1:] == ("values", {"topic": "t", "log": []})
    assert ("custom", {"step": 1, "total": 4, "name": "plan", "status": "started"}) in [e[1:] for e in events]
    assert events[-1][1:] == ("values", result)


def test_after_seconds_delays_the_run(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    started = time.monotonic()
    run = client.runs.create(thread_id, "echo", input=echo_input("later"), after_seconds=1.5)
    assert client.runs.get(thread_id, run["run_id"])["status"] == "pending"
    assert client.threads.get(thread_id)["status"] == "busy"
    client.runs.join(thread_id, run["run_id"])
    assert time.monotonic() - started >= 1.5
    assert client.runs.get(thread_id, run["run_id"])["status"] == "success"


def test_deleting_a_thread_stops_its_running_graph(client, live) -> None:
    from runs.models import Run

    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "echo", input=echo_input("long", sleep=30))
    _wait_running(client, thread_id, run["run_id"])
    client.threads.delete(thread_id)
    with pytest.raises(NotFoundError):
        client.threads.get(thread_id)
    # The worker notices and is free again: a new run on another thread starts and finishes.
    other = client.threads.create()["thread_id"]
    started = time.monotonic()
    assert client.runs.wait(other, "echo", input=echo_input("next"))["messages"][-1]["content"] == "echo: next"
    assert time.monotonic() - started < 5
    assert not Run.objects.filter(pk=run["run_id"]).exists()


def test_async_client_wait_cancel_and_join(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        thread = await client.threads.create()
        thread_id = thread["thread_id"]
        result = await client.runs.wait(thread_id, "echo", input=echo_input("a"))
        assert result["messages"][-1]["content"] == "echo: a"
        run = await client.runs.create(thread_id, "echo", input=echo_input("b", sleep=30))
        for _ in range(200):
            if (await client.runs.get(thread_id, run["run_id"]))["status"] == "running":
                break
            await asyncio.sleep(0.05)
        joiner = asyncio.create_task(client.runs.join(thread_id, run["run_id"]))
        await client.runs.cancel(thread_id, run["run_id"])
        interrupted = await asyncio.wait_for(joiner, timeout=5)
        # The join of a cancelled run answers with the state at the interruption.
        assert [m["content"] for m in interrupted["messages"]] == ["a", "echo: a", "b"]
        assert (await client.runs.get(thread_id, run["run_id"]))["status"] == "interrupted"
        with pytest.raises(NotFoundError):
            await client.threads.get(str(uuid.uuid4()))
        history = await client.threads.get_history(thread_id, limit=2)
        assert len(history) == 2

    asyncio.run(scenario())


def test_wait_with_on_disconnect_cancel_interrupts_the_run(client, live) -> None:
    thread_id = client.threads.create()["thread_id"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{live.url}/threads/{thread_id}/runs/wait",
            json={"assistant_id": "echo", "input": echo_input("bye", sleep=30), "on_disconnect": "cancel"},
            headers={"x-api-key": live.api_key},
            timeout=httpx.Timeout(5, read=1.5),
        )
    [run] = client.runs.list(thread_id)
    wait_for(lambda: client.runs.get(thread_id, run["run_id"])["status"] == "interrupted",
             timeout=5, message="run cancelled after the client hung up")


def test_state_at_checkpoint_dict_and_bad_update(client) -> None:
    from langgraph_sdk.errors import BadRequestError

    thread_id = client.threads.create()["thread_id"]
    with pytest.raises(BadRequestError):
        client.threads.update_state(thread_id, {"messages": []})  # no graph ran on it yet
    client.runs.wait(thread_id, "echo", input=echo_input("hi"))
    history = client.threads.get_history(thread_id)
    middle = history[1]["checkpoint"]
    state = client.threads.get_state(thread_id, checkpoint=middle)
    assert state["checkpoint_id"] == middle["checkpoint_id"] and state["next"] == ["echo"]
    with pytest.raises(BadRequestError) as bad_node:
        client.threads.update_state(thread_id, {"messages": []}, as_node="nope")
    assert bad_node.value.body == {"detail": "Node nope does not exist"}
