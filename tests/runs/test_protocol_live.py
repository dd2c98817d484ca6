"""The v2 protocol (POST /threads/{id}/commands, POST /threads/{id}/stream/events) against a
live server and cluster: langgraph-sdk's ``client.threads.stream(...)`` end to end, and the
endpoints' own answers with plain HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from langgraph_sdk import get_client

pytestmark = pytest.mark.live

TIMEOUT = 30


def echo_input(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


def test_threads_stream_runs_a_graph_on_a_minted_thread(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        async with client.threads.stream(assistant_id="echo") as thread:
            started = await thread.run.start(input=echo_input("hi"))
            assert uuid.UUID(started["run_id"])
            output = await thread.output.with_timeout(TIMEOUT)
        assert [m["content"] for m in output["messages"]] == ["hi", "echo: hi"]
        run = await client.runs.get(thread.thread_id, started["run_id"])
        assert run["status"] == "success"

    asyncio.run(scenario())


def test_threads_stream_values_then_a_second_turn_on_the_same_thread(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        async with client.threads.stream(assistant_id="echo") as thread:
            await thread.run.start(input=echo_input("one"))
            snapshots = []
            async for values in thread.values:
                snapshots.append(values)
        # The state before the run (empty), then the run's values chunks.
        assert snapshots[-1]["messages"][-1]["content"] == "echo: one"
        thread_id = thread.thread_id

        # An explicit thread: its stream must not take the first run's end for the second's.
        async with client.threads.stream(thread_id, assistant_id="echo") as again:
            await again.run.start(input=echo_input("two"))
            output = await again.output.with_timeout(TIMEOUT)
        assert [m["content"] for m in output["messages"]][-2:] == ["two", "echo: two"]

    asyncio.run(scenario())


def test_threads_stream_interrupt_and_resume(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        async with client.threads.stream(assistant_id="hitl") as thread:
            await thread.run.start(input=echo_input("deploy?"))
            async for _ in thread.values:
                pass  # ends when the run pauses at its interrupt
            for _ in range(100):
                if thread.interrupted:
                    break
                await asyncio.sleep(0.05)
            assert thread.interrupted
            [pending] = thread.interrupts
            assert pending["value"] == {"question": "approve?"}
            assert pending["namespace"] == []
            await thread.run.respond("yes")
            output = await thread.output.with_timeout(TIMEOUT)
        assert output["approved"] == "yes"
        assert (await client.threads.get(thread.thread_id))["status"] == "idle"

    asyncio.run(scenario())


def test_threads_stream_a_failing_run_raises(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        async with client.threads.stream(assistant_id="echo") as thread:
            await thread.run.start(input=echo_input("fail"))
            with pytest.raises(RuntimeError, match="boom requested"):
                await thread.output.with_timeout(TIMEOUT)

    asyncio.run(scenario())


def _sse_events(response: httpx.Response, count: int) -> list[dict]:
    events: list[dict] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
            if len(events) == count:
                break
    return events


def test_commands_and_event_stream_over_plain_http(live) -> None:
    headers = {"x-api-key": live.api_key}
    thread_id = str(uuid.uuid4())
    url = f"{live.url}/threads/{thread_id}"
    with httpx.Client(headers=headers, timeout=TIMEOUT) as http:
        # No thread yet: its events are a 404, as a stream of a missing thread is, and so is any
        # command but run.start, which makes it.
        assert http.post(f"{url}/stream/events", json={"channels": ["lifecycle"]}).status_code == 404
        assert http.post(f"{url}/commands", json={"id": 1, "method": "agent.getTree"}).status_code == 404
        started = http.post(
            f"{url}/commands",
            json={"id": 7, "method": "run.start", "params": {"assistant_id": "echo", "input": echo_input("x")}},
        ).json()
        assert started["type"] == "success" and started["id"] == 7
        since = started["meta"]["applied_through_seq"]
        with http.stream(
            "POST", f"{url}/stream/events", json={"channels": ["lifecycle", "values"], "since": since}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(response, 4)
        methods = [(e["method"], e["params"]["data"].get("event")) for e in events if e["method"] == "lifecycle"]
        assert methods == [("lifecycle", "started"), ("lifecycle", "completed")]
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and all(seq > since for seq in seqs)
        assert all(e["event_id"] == str(e["seq"]) and e["params"]["namespace"] == [] for e in events)
        values = [e["params"]["data"] for e in events if e["method"] == "values"]
        assert values[-1]["messages"][-1]["content"] == "echo: x"

        # Resuming after the first event replays the rest, and only values were asked for here.
        with http.stream(
            "POST", f"{url}/stream/events", json={"channels": ["values"], "since": seqs[0]}
        ) as response:
            replayed = _sse_events(response, 2)
        assert [e["seq"] for e in replayed] == [e["seq"] for e in events if e["method"] == "values"]

        tree = http.post(f"{url}/commands", json={"id": 8, "method": "agent.getTree"}).json()
        assert tree["result"]["tree"] == {"namespace": [], "status": "completed", "graph_name": "echo"}
        state = http.post(f"{url}/commands", json={"id": 9, "method": "state.get", "params": {"namespace": []}})
        assert state.json()["result"]["values"]["messages"][-1]["content"] == "echo: x"

        unknown = http.post(f"{url}/commands", json={"id": 10, "method": "nope"}).json()
        assert unknown == {"type": "error", "id": 10, "error": "unknown_command", "message": "Unknown command 'nope'."}
        no_interrupt = http.post(
            f"{url}/commands",
            json={"id": 11, "method": "input.respond", "params": {"interrupt_id": "x", "namespace": [], "response": 1}},
        ).json()
        assert no_interrupt["error"] == "no_such_interrupt"
        bad_assistant = http.post(
            f"{url}/commands", json={"id": 12, "method": "run.start", "params": {"assistant_id": "nope"}}
        ).json()
        assert bad_assistant["type"] == "error" and bad_assistant["error"] == "invalid_argument"

        malformed = http.post(f"{url}/commands", json={"method": "run.start"})
        assert malformed.status_code == 400 and malformed.json()["id"] is None
        assert http.post(f"{url}/stream/events", json={"channels": []}).status_code == 400
        assert http.post(f"{url}/stream/events", json={"channels": ["nope"]}).status_code == 400
        assert http.post(f"{url}/stream/events", json={"channels": ["values"], "since": -1}).status_code == 400

    # Another user's thread is not theirs to command or watch.
    with httpx.Client(headers={"x-api-key": live.other_api_key}, timeout=TIMEOUT) as other:
        assert other.post(f"{url}/stream/events", json={"channels": ["values"]}).status_code == 404
        theirs = other.post(f"{url}/commands", json={"id": 1, "method": "agent.getTree"})
        assert theirs.status_code == 404
        taken = other.post(
            f"{url}/commands", json={"id": 2, "method": "run.start", "params": {"assistant_id": "echo"}}
        )
        assert taken.status_code == 404
