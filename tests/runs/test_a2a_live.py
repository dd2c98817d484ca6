"""POST /a2a/{assistant_id} with plain JSON-RPC against a live server and cluster: message/send,
message/stream, tasks/get, tasks/cancel, an interrupt resumed, and the agent card."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

pytestmark = pytest.mark.live

ECHO = "046b5dc7-2108-582c-9c6c-31d556d138f0"  # the echo graph's system assistant


def _hitl_id(live) -> str:
    found = httpx.post(
        f"{live.url}/assistants/search", json={"graph_id": "hitl"}, headers={"x-api-key": live.api_key}
    ).json()
    return found[0]["assistant_id"]


def _rpc(live, assistant_id: str, method: str, params: dict, *, api_key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{live.url}/a2a/{assistant_id}",
        json={"jsonrpc": "2.0", "id": "r1", "method": method, "params": params},
        headers={"x-api-key": api_key or live.api_key, "Accept": "application/json"},
        timeout=30,
    )


def _text(text: str, context_id: str | None = None, **extra) -> dict:
    message = {"role": "user", "parts": [{"kind": "text", "text": text}], "messageId": str(uuid.uuid4()), **extra}
    if context_id:
        message["contextId"] = context_id
    return {"message": message}


def test_message_send_two_turns_and_tasks_get(live) -> None:
    first = _rpc(live, ECHO, "message/send", _text("hello a2a")).json()
    assert first["jsonrpc"] == "2.0" and first["id"] == "r1"
    task = first["result"]
    assert task["kind"] == "task" and task["status"] == {"state": "completed"}
    assert task["artifacts"][0]["parts"] == [{"kind": "text", "text": "echo: hello a2a"}]
    context_id = task["contextId"]
    assert uuid.UUID(context_id) and uuid.UUID(task["id"])

    # The same context keeps the conversation: it is the thread.
    second = _rpc(live, ECHO, "message/send", _text("again", context_id)).json()["result"]
    assert second["contextId"] == context_id and second["id"] != task["id"]
    thread = httpx.get(f"{live.url}/threads/{context_id}/state", headers={"x-api-key": live.api_key}).json()
    contents = [m["content"] for m in thread["values"]["messages"]]
    assert contents == ["hello a2a", "echo: hello a2a", "again", "echo: again"]

    got = _rpc(
        live, ECHO, "tasks/get", {"id": task["id"], "contextId": context_id, "historyLength": 2}
    ).json()
    assert got["result"]["status"]["state"] == "completed"
    assert [(m["role"], m["parts"][0]["text"]) for m in got["result"]["history"]] == [
        ("user", "again"), ("agent", "echo: again"),
    ]
    missing = _rpc(live, ECHO, "tasks/get", {"id": str(uuid.uuid4()), "contextId": context_id}).json()
    assert missing["error"]["code"] == -32001
    # Another user's task is not theirs.
    theirs = _rpc(live, ECHO, "tasks/get", {"id": task["id"], "contextId": context_id}, api_key=live.other_api_key)
    assert theirs.json()["error"]["code"] == -32001

    finished = _rpc(live, ECHO, "tasks/cancel", {"id": task["id"], "contextId": context_id}).json()
    assert finished["error"]["code"] == -32002


def test_a_failing_run_data_parts_and_bad_requests(live) -> None:
    failed = _rpc(live, ECHO, "message/send", _text("fail")).json()["result"]
    assert failed["status"]["state"] == "failed"
    assert failed["status"]["message"]["parts"][0]["text"] == "boom requested"

    steps = httpx.post(
        f"{live.url}/assistants/search", json={"graph_id": "steps"}, headers={"x-api-key": live.api_key}
    ).json()[0]["assistant_id"]
    # steps' input has no messages: text is refused, data is its input.
    refused = _rpc(live, steps, "message/send", _text("hi")).json()
    assert refused["error"]["code"] == -32602 and "messages" in refused["error"]["message"]
    data = {"message": {"role": "user", "parts": [{"kind": "data", "data": {"topic": "a2a", "delay": 0}}],
                        "messageId": "m"}}
    done = _rpc(live, steps, "message/send", data).json()["result"]
    assert done["status"]["state"] == "completed"
    assert done["artifacts"][0]["parts"][0]["kind"] == "data"
    assert done["artifacts"][0]["parts"][0]["data"]["topic"] == "a2a"

    assert _rpc(live, ECHO, "nope/nope", {}).json()["error"]["code"] == -32601
    assert _rpc(live, ECHO, "message/send", {}).json()["error"]["code"] == -32602
    assert _rpc(live, ECHO, "message/send", _text("x", "not-a-uuid")).json()["error"]["code"] == -32602
    headers = {"x-api-key": live.api_key}
    assert httpx.post(f"{live.url}/a2a/{ECHO}", content=b"{", headers=headers).json()["error"]["code"] == -32700
    assert httpx.post(f"{live.url}/a2a/{uuid.uuid4()}", json={}, headers=headers).status_code == 404
    assert httpx.post(f"{live.url}/a2a/{ECHO}", json={}).status_code == 401
    no_sse = _rpc(live, ECHO, "message/stream", _text("x"))
    assert no_sse.status_code == 400


def test_message_stream_and_interrupt_resume(live) -> None:
    events = []
    with httpx.stream(
        "POST", f"{live.url}/a2a/{ECHO}",
        json={"jsonrpc": "2.0", "id": 5, "method": "message/stream", "params": _text("streamed")},
        headers={"x-api-key": live.api_key, "Accept": "text/event-stream"}, timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert all(e["id"] == 5 for e in events)
    kinds = [(e["result"]["kind"], e["result"].get("status", {}).get("state")) for e in events]
    assert kinds == [("task", "submitted"), ("status-update", "working"), ("artifact-update", None),
                     ("status-update", "completed")]
    assert events[2]["result"]["artifact"]["parts"] == [{"kind": "text", "text": "echo: streamed"}]
    assert events[-1]["result"]["final"] is True

    hitl = _hitl_id(live)
    paused = _rpc(live, hitl, "message/send", _text("deploy?")).json()["result"]
    assert paused["status"]["state"] == "input-required"
    assert paused["status"]["message"]["parts"] == [{"kind": "data", "data": {"interrupt": {"question": "approve?"}}}]
    resumed = _rpc(live, hitl, "message/send", _text("yes", paused["contextId"], taskId=paused["id"])).json()["result"]
    assert resumed["status"]["state"] == "completed"
    assert resumed["artifacts"][0]["parts"][0]["data"]["approved"] == "yes"


def test_cancel_a_running_task(live) -> None:
    # A run that takes 30 s, created through the REST API so this test does not wait for it.
    thread_id = httpx.post(f"{live.url}/threads", json={}, headers={"x-api-key": live.api_key}).json()["thread_id"]
    run = httpx.post(
        f"{live.url}/threads/{thread_id}/runs",
        json={"assistant_id": ECHO, "input": {"messages": [{"role": "user", "content": "slow"}], "sleep": 30}},
        headers={"x-api-key": live.api_key},
    ).json()
    canceled = _rpc(live, ECHO, "tasks/cancel", {"id": run["run_id"], "contextId": thread_id}).json()["result"]
    assert canceled["status"]["state"] in ("canceled", "working")
    for _ in range(100):
        got = _rpc(live, ECHO, "tasks/get", {"id": run["run_id"], "contextId": thread_id}).json()["result"]
        if got["status"]["state"] == "canceled":
            break
        time.sleep(0.1)
    assert got["status"]["state"] == "canceled"


def test_the_agent_card(live) -> None:
    headers = {"x-api-key": live.api_key}
    card = httpx.get(f"{live.url}/a2a/{ECHO}/.well-known/agent-card.json", headers=headers).json()
    assert card["url"] == f"{live.url}/a2a/{ECHO}"
    assert card["name"] == "echo" and card["capabilities"]["streaming"] is True
    assert card["preferredTransport"] == "JSONRPC" and card["skills"][0]["tags"] == ["echo"]
    assert httpx.get(f"{live.url}/.well-known/agent-card.json?assistant_id={ECHO}", headers=headers).json() == card
    assert httpx.get(f"{live.url}/.well-known/agent-card.json", headers=headers).status_code == 404
    assert httpx.get(f"{live.url}/a2a/{ECHO}/.well-known/agent-card.json").status_code == 401
