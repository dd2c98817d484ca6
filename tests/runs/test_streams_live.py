"""Run and thread streams through langgraph-sdk and raw HTTP, against a real server and cluster."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from langgraph_sdk import get_sync_client

from tests.conftest import wait_for

pytestmark = pytest.mark.live


def user_message(content: str) -> dict:
    return {"role": "user", "content": content}


def echo_input(content: str, sleep: float | None = None) -> dict:
    body: dict = {"messages": [user_message(content)]}
    if sleep is not None:
        body["sleep"] = sleep
    return body


class Recorder:
    """The requests an SDK client makes, recorded through an httpx event hook."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(live, recorder):
    sdk = get_sync_client(url=live.url, api_key=live.api_key)
    sdk.http.client.event_hooks["request"].append(recorder)
    return sdk


def headers(live) -> dict[str, str]:
    return {"x-api-key": live.api_key}


def run_status(client, thread_id: str, run_id: str) -> str:
    return client.runs.get(thread_id, run_id)["status"]


def wait_for_cancel(client, thread_id: str, run_id: str, *, what: str) -> None:
    """The run ends ``interrupted`` soon after its client hung up (a worker checks for cancels
    every 0.2 s); a failure shows where the run stood: no ``cancel_action`` is a hang-up the
    server missed, one is a worker that did not stop."""
    from runs.models import Run

    deadline = time.monotonic() + 10
    while run_status(client, thread_id, run_id) != "interrupted":
        if time.monotonic() > deadline:
            row = Run.objects.filter(pk=run_id).values(
                "status", "cancel_action", "created_at", "started_at", "cancel_requested_at", "worker"
            ).first()
            pytest.fail(f"{what}: not interrupted 10 s after the hang-up: {row}")
        time.sleep(0.05)


def test_default_stream_is_byte_exact_with_a_heartbeat_and_a_final_status(live, client) -> None:
    thread_id = client.threads.create()["thread_id"]
    # Once the cluster has booted (a run waiting for it would get heartbeats first).
    client.runs.wait(thread_id, "echo", input=echo_input("warm-up"))
    body = {"assistant_id": "echo", "input": echo_input("hi", sleep=5.5)}
    with httpx.stream(
        "POST", f"{live.url}/threads/{thread_id}/runs/stream", json=body, headers=headers(live), timeout=30
    ) as response:
        raw = b"".join(response.iter_raw())
        # The final status is stored before the body ends: no reconnect loop for the SDK.
        run_id = response.headers["content-location"].rsplit("/", 1)[1]
        assert run_status(client, thread_id, run_id) == "success"

    warm_up = b'{"role":"user","content":"warm-up"},{"role":"assistant","content":"echo: warm-up"}'
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["location"] == f"/threads/{thread_id}/runs/{run_id}/stream"
    assert response.headers["content-location"] == f"/threads/{thread_id}/runs/{run_id}"
    assert raw == (
        b'event: metadata\r\ndata: {"run_id":"' + run_id.encode() + b'","attempt":1}\r\n\r\n'
        b'event: values\r\ndata: {"messages":[' + warm_up + b',{"role":"user","content":"hi"}],'
        b'"sleep":5.5}\r\n\r\n'
        b": heartbeat\r\n\r\n"
        b'event: values\r\ndata: {"messages":[' + warm_up + b',{"role":"user","content":"hi"},'
        b'{"role":"assistant","content":"echo: hi"}],"sleep":5.5}\r\n\r\n'
    )


def test_sdk_stream_of_each_mode(client, recorder) -> None:
    thread_id = client.threads.create()["thread_id"]

    def stream(graph: str, graph_input: dict, mode, **kwargs) -> list:
        return list(client.runs.stream(thread_id, graph, input=graph_input, stream_mode=mode, **kwargs))

    values = stream("echo", echo_input("v"), "values")
    assert [p.event for p in values] == ["metadata", "values", "values"]
    assert values[0].data == {"run_id": values[0].data["run_id"], "attempt": 1}
    assert values[-1].data["messages"][-1] == {"role": "assistant", "content": "echo: v"}
    assert all(p.id is None for p in values)  # not resumable: no ids
    # After the stream, the SDK checked the run once and found it finished.
    run_path = f"/threads/{thread_id}/runs/{values[0].data['run_id']}"
    assert recorder.requests[-2:] == [("POST", f"/threads/{thread_id}/runs/stream"), ("GET", run_path)]

    updates = stream("echo", echo_input("u"), "updates")
    assert [(p.event, p.data) for p in updates[1:]] == [
        ("updates", {"echo": {"messages": [{"role": "assistant", "content": "echo: u"}]}})
    ]

    custom = stream("steps", {"topic": "c"}, "custom")
    assert [p.event for p in custom] == ["metadata"] + ["custom"] * 8
    assert [(p.data["name"], p.data["status"]) for p in custom[1:3]] == [("plan", "started"), ("plan", "done")]

    debug = stream("echo", echo_input("d"), "debug")
    assert {p.data["type"] for p in debug[1:]} == {"checkpoint", "task", "task_result"}
    assert {"step", "timestamp", "type", "payload"} <= set(debug[1].data)

    tasks = stream("echo", echo_input("t"), ["tasks", "checkpoints"])
    assert [p.event for p in tasks[1:]] == ["checkpoints", "checkpoints", "tasks", "tasks", "checkpoints"]
    started, finished = (p.data for p in tasks if p.event == "tasks")
    assert (started["name"], "input" in started) == ("echo", True)
    assert finished["result"] == {"messages": [{"role": "assistant", "content": "echo: t"}]}

    several = stream("steps", {"topic": "s"}, ["values", "updates", "custom"])
    names = [p.event for p in several]
    assert (names.count("values"), names.count("updates"), names.count("custom")) == (5, 4, 8)
    # In production order: each step's custom "started" comes before its update.
    assert names.index("custom") < names.index("updates")

    events = stream("echo", echo_input("e"), "events")
    assert events[1].event == "events" and events[1].data["event"] == "on_chain_start"


def test_sdk_messages_modes_and_subgraphs(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    chat_input = {"messages": [user_message("hello you")]}
    tuples = list(client.runs.stream(thread_id, "chat", input=chat_input, stream_mode="messages-tuple"))
    assert [p.event for p in tuples] == ["metadata"] + ["messages"] * 4
    assert "".join(p.data[0]["content"] for p in tuples[1:]) == "echo: hello you"
    assert tuples[1].data[1]["langgraph_node"] == "chat"

    v1 = list(client.runs.stream(thread_id, "chat", input=chat_input, stream_mode="messages"))
    assert [p.event for p in v1][:3] == ["metadata", "messages/metadata", "messages/partial"]
    assert v1[-1].data[0]["content"] == "echo: hello you" and v1[-1].data[0]["type"] == "ai"

    nested = list(
        client.runs.stream(
            None, "nested", input={"topic": "n"}, stream_mode=["updates", "custom"], stream_subgraphs=True
        )
    )
    names = [p.event for p in nested]
    assert names[0] == "metadata" and names[1] == "updates"
    assert names[2].startswith("custom|child:") and names[3].startswith("updates|child:")
    assert nested[2].data == {"inner": "n"}


def test_resumable_stream_resumes_with_no_gap_and_no_duplicate(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    first: list = []
    stream = client.runs.stream(
        thread_id, "steps", input={"topic": "r", "delay": 0.3}, stream_mode=["values", "custom"],
        stream_resumable=True,
    )
    for part in stream:
        first.append(part)
        if len(first) == 4:
            break
    stream.close()  # the client goes away; the run goes on (on_disconnect defaults to continue)
    run_id = first[0].data["run_id"]
    assert all(p.id for p in first)

    rest = list(client.runs.join_stream(thread_id, run_id, last_event_id=first[-1].id))
    assert run_status(client, thread_id, run_id) == "success"
    everything = list(client.runs.join_stream(thread_id, run_id, last_event_id="-1"))

    assert first + rest == everything
    assert len({p.id for p in everything}) == len(everything) == 1 + 5 + 8
    assert [p.id for p in everything] == sorted(p.id for p in everything)
    # A join after the end without Last-Event-ID sends nothing (as the real server).
    assert list(client.runs.join_stream(thread_id, run_id)) == []
    only_values = list(client.runs.join_stream(thread_id, run_id, last_event_id="0", stream_mode="values"))
    assert [p.event for p in only_values] == ["metadata"] + ["values"] * 5


def test_join_stream_of_a_running_run_follows_it_live(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "steps", input={"topic": "j", "delay": 0.3}, stream_mode=["custom"])
    joined = list(client.runs.join_stream(thread_id, run["run_id"]))
    assert run_status(client, thread_id, run["run_id"]) == "success"
    everything = list(client.runs.join_stream(thread_id, run["run_id"], last_event_id="0"))
    # Live from the moment of joining to the end: a tail of the run's events, none twice.
    assert joined and joined == everything[len(everything) - len(joined):]
    assert joined[-1].data == {"step": 4, "total": 4, "name": "review", "status": "done"}


def test_thread_join_stream_carries_every_run_with_ids_and_run_done(live, client) -> None:
    thread_id = client.threads.create()["thread_id"]
    seen: list = []
    done = threading.Event()

    opened = threading.Event()

    def follow() -> None:
        reader = get_sync_client(url=live.url, api_key=live.api_key)
        # The server fixes where "now" is before it answers: with the headers, the stream is live.
        reader.http.client.event_hooks["response"].append(lambda response: opened.set())
        stream = reader.threads.join_stream(thread_id)
        for part in stream:
            seen.append(part)
            if sum(1 for p in seen if p.data.get("status") == "run_done") == 2:
                break
        stream.close()
        done.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert opened.wait(10)
    first = client.runs.wait(thread_id, "echo", input=echo_input("one"))
    assert first["messages"][-1]["content"] == "echo: one"
    second = client.runs.create(thread_id, "echo", input=echo_input("two"))
    assert done.wait(15), seen

    runs = [r["run_id"] for r in reversed(client.runs.list(thread_id))]
    assert [(p.event, p.data.get("run_id")) for p in seen if p.event == "metadata"] == [
        ("metadata", runs[0]), ("metadata", runs[0]), ("metadata", runs[1]), ("metadata", runs[1]),
    ]
    assert seen[3].data == {"status": "run_done", "run_id": runs[0]}
    assert second["run_id"] == runs[1]
    assert all(p.id for p in seen) and [p.id for p in seen] == sorted(p.id for p in seen)
    # The same events again from the start ("-"), e.g. for a client that reconnects.
    replay: list = []
    for part in client.threads.join_stream(thread_id, last_event_id="-"):
        replay.append(part)
        if len(replay) == len(seen):
            break
    assert replay == seen


def test_interrupt_and_resume_over_streams(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    paused = list(client.runs.stream(thread_id, "hitl", input={"messages": [user_message("deploy?")]}))
    assert paused[-1].event == "values"
    assert paused[-1].data["__interrupt__"][0]["value"] == {"question": "approve?"}
    assert client.threads.get(thread_id)["status"] == "interrupted"

    resumed = list(client.runs.stream(thread_id, "hitl", command={"resume": "yes"}, stream_mode="updates"))
    assert [(p.event, p.data) for p in resumed[1:]] == [("updates", {"ask": {"approved": "yes"}})]
    assert client.threads.get(thread_id)["status"] == "idle"

    before = list(
        client.runs.stream(
            thread_id, "echo", input=echo_input("x"), stream_mode=["values", "updates"],
            interrupt_before=["echo"],
        )
    )
    assert ("updates", {"__interrupt__": []}) in [(p.event, p.data) for p in before]
    assert client.threads.get_state(thread_id)["next"] == ["echo"]
    finished = list(client.runs.stream(thread_id, "echo", input=None, stream_mode="values"))
    assert finished[-1].data["messages"][-1]["content"] == "echo: x"


def test_cancel_while_streaming_closes_the_stream_quietly(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    parts: list = []
    ended = threading.Event()

    def consume() -> None:
        for part in client.runs.stream(thread_id, "echo", input=echo_input("long", sleep=30)):
            parts.append(part)
        ended.set()

    threading.Thread(target=consume, daemon=True).start()
    wait_for(lambda: len(parts) >= 2, timeout=10, message="metadata and first values")
    run_id = parts[0].data["run_id"]
    started = time.monotonic()
    client.runs.cancel(thread_id, run_id)
    assert ended.wait(5)
    assert time.monotonic() - started < 2
    assert [p.event for p in parts] == ["metadata", "values"]  # no error, no end: it just closes
    assert run_status(client, thread_id, run_id) == "interrupted"


def test_graph_error_is_an_error_event_and_the_stream_ends(client) -> None:
    thread_id = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(thread_id, "echo", input=echo_input("fail")))
    assert [p.event for p in parts] == ["metadata", "values", "error"]
    assert parts[-1].data == {"error": "ValueError", "message": "boom requested"}
    assert client.threads.get(thread_id)["status"] == "error"


def test_stateless_stream_deletes_its_thread_unless_kept(live, client) -> None:
    parts = list(client.runs.stream(None, "echo", input=echo_input("alone")))
    assert [p.event for p in parts] == ["metadata", "values", "values"]
    assert client.threads.count() == 0

    with httpx.stream(
        "POST", f"{live.url}/runs/stream", headers=headers(live), timeout=20,
        json={"assistant_id": "echo", "input": echo_input("kept"), "on_completion": "keep"},
    ) as response:
        body = b"".join(response.iter_raw())
    run_id = response.headers["content-location"].rsplit("/", 1)[1]
    # As on the real server: a Location route that does not exist (the SDK then stops).
    assert response.headers["location"] == f"/runs/{run_id}/stream"
    assert httpx.get(f"{live.url}/runs/{run_id}", headers=headers(live)).status_code == 404
    assert b"echo: kept" in body
    [thread] = client.threads.search()
    assert thread["values"]["messages"][-1]["content"] == "echo: kept"


def read_until_metadata(response: httpx.Response) -> None:
    for line in response.iter_lines():
        if line.startswith("event: metadata"):
            return


def test_on_disconnect_cancel_interrupts_and_continue_lets_it_finish(live, client) -> None:
    thread_id = client.threads.create()["thread_id"]
    cancelled_body = {"assistant_id": "echo", "input": echo_input("bye", sleep=30), "on_disconnect": "cancel"}
    with httpx.stream("POST", f"{live.url}/threads/{thread_id}/runs/stream", json=cancelled_body,
                      headers=headers(live), timeout=20) as response:
        read_until_metadata(response)
    [run] = client.runs.list(thread_id)
    wait_for_cancel(client, thread_id, run["run_id"], what="run cancelled after the client hung up")

    kept_body = {"assistant_id": "echo", "input": echo_input("stay", sleep=1)}
    with httpx.stream("POST", f"{live.url}/threads/{thread_id}/runs/stream", json=kept_body,
                      headers=headers(live), timeout=20) as response:
        read_until_metadata(response)
    latest = client.runs.list(thread_id)[0]
    assert client.runs.join(thread_id, latest["run_id"])["messages"][-1]["content"] == "echo: stay"
    assert run_status(client, thread_id, latest["run_id"]) == "success"

    # A join with cancel_on_disconnect=true cancels too.
    run = client.runs.create(thread_id, "echo", input=echo_input("joined", sleep=30))
    with httpx.stream("GET", f"{live.url}/threads/{thread_id}/runs/{run['run_id']}/stream",
                      params={"cancel_on_disconnect": "true"}, headers=headers(live), timeout=20) as response:
        assert response.status_code == 200
        wait_for(lambda: run_status(client, thread_id, run["run_id"]) == "running", timeout=10,
                 message="joined run running")
    wait_for_cancel(client, thread_id, run["run_id"], what="joined run cancelled on disconnect")

    # A stateless stream whose client left: its thread goes when the run ends.
    with httpx.stream("POST", f"{live.url}/runs/stream", headers=headers(live), timeout=20,
                      json={"assistant_id": "echo", "input": echo_input("gone", sleep=0.5)}) as response:
        read_until_metadata(response)
    wait_for(lambda: client.threads.count() == 1, timeout=10, message="temporary thread deleted")


def database_handles(pid: int) -> int:
    """Open handles of process ``pid`` on the test database: SQLite files or PostgreSQL sockets."""
    if connection.vendor == "sqlite":
        name = str(Path(connection.settings_dict["NAME"]).resolve())
        count = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                count += os.readlink(fd).startswith(name)
            except OSError:
                pass
        return count
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2].endswith(":1538") and fields[9] in inodes:  # remote port 5432
                count += 1
    return count


def test_streams_hold_no_connection_and_hang_ups_leave_nothing_behind(live, client) -> None:
    pid = live.server.process.pid
    threads_before = len(os.listdir(f"/proc/{pid}/task"))
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "echo", input=echo_input("watched", sleep=30))
    wait_for(lambda: run_status(client, thread_id, run["run_id"]) == "running", timeout=10, message="running")
    handles_before = database_handles(pid)

    streams = []
    with httpx.Client(base_url=live.url, headers=headers(live), timeout=20) as http:

        def open_streams(count: int) -> None:
            for _ in range(count):
                request = http.build_request(
                    "GET", f"/threads/{thread_id}/runs/{run['run_id']}/stream",
                    params={"cancel_on_disconnect": "false" if streams else "true"},
                )
                streams.append(http.send(request, stream=True))
            time.sleep(1.0)  # every stream made its reads and waits idle

        # One stream: the process's event hub starts (one shared database poll).
        open_streams(1)
        with_hub = database_handles(pid)
        open_streams(19)
        assert {response.status_code for response in streams} == {200}
        # Idle streams hold no database connection: nineteen more streams add far fewer than
        # nineteen handles. (Not zero: SQLite keeps a closed connection's file open while another
        # connection of the process holds a lock on it; PostgreSQL's pool keeps what it grew to
        # for the concurrent reads, at most one per executor thread.)
        assert database_handles(pid) - with_hub <= 19 // 2
        for response in streams:
            response.close()

    # The first join asked to cancel on disconnect: the run stops and frees its worker slot.
    wait_for(lambda: run_status(client, thread_id, run["run_id"]) == "interrupted", timeout=5,
             message="run cancelled by the hung-up join")
    started = time.monotonic()
    fresh = client.threads.create()["thread_id"]  # ("sleep" stays in the first thread's state)
    assert client.runs.wait(fresh, "echo", input=echo_input("next"))["messages"][-1]["content"] == "echo: next"
    assert time.monotonic() - started < 5
    # The executor's threads stay for reuse, and on PostgreSQL the pool starts its own workers
    # (3): some growth, but far from a thread per stream (20).
    allowance = 8 if connection.vendor == "sqlite" else 14
    wait_for(lambda: len(os.listdir(f"/proc/{pid}/task")) <= threads_before + allowance, timeout=10,
             message="server threads back near their count before the streams")
    # What one stream costs at most (the hub's poll, SQLite's kept file handles): nothing per stream.
    # On PostgreSQL the API process's connection pool may keep what it grew to for the
    # concurrent reads (idle connections, bounded by DATABASE_POOL_MAX), which is not a leak.
    ceiling = max(handles_before, with_hub)
    if connection.vendor == "postgresql":
        ceiling = max(ceiling, settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"])
    wait_for(lambda: database_handles(pid) <= ceiling, timeout=10,
             message="no database handle left by the streams")


def test_other_users_and_bad_requests(live, client) -> None:
    other = get_sync_client(url=live.url, api_key=live.other_api_key)
    thread_id = client.threads.create()["thread_id"]
    from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

    with pytest.raises(NotFoundError):
        list(other.runs.stream(thread_id, "echo", input=echo_input("x")))
    with pytest.raises(NotFoundError):
        list(other.threads.join_stream(thread_id))
    with pytest.raises(UnprocessableEntityError):
        list(client.runs.stream(thread_id, "nope", input={}))
    missing = list(client.runs.join_stream(thread_id, str(uuid.uuid4())))
    assert [(p.event, p.data) for p in missing] == [
        ("error", {"error": "HTTPException", "message": "404: Run not found"})
    ]
