"""Nobody reaches another user's objects: every route that takes an id, every method.

The routes come from the URL resolver, so a new route with an id is tested as soon as it exists,
and fails here until it has a request in ``REQUESTS`` (a method it does not serve must answer 405
to its owner too). Alice owns an assistant, a thread with a checkpoint, a run, an execution and
a schedule, each carrying a secret marker; Bob asks for them by id and must get a 404 that holds
none of Alice's data, and must leave every row as it was. Streams answer before they start streaming.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import api_key_create
from executions.models import Execution
from project.openapi import HTTP_METHODS, Route, api_routes
from runs.models import Assistant, Cron, Run, Thread
from schedules.models import Schedule

# Streams are async views that read the database from other threads: data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

MARKER = "alice-secret-" + uuid.uuid4().hex
RUN_BODY = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}

# Bob's request per "METHOD path": a body that would be valid for Alice, so only ownership stops
# it. Several entries are several attempts.
REQUESTS: dict[str, list[dict[str, Any]]] = {
    "GET /api/v1/executions/{pk}": [{}],
    "POST /api/v1/executions/{pk}/cancel": [{}],
    "GET /api/v1/executions/{pk}/webhooks": [{}],
    "GET /api/v1/executions/{pk}/events": [{}, {"headers": {"HTTP_LAST_EVENT_ID": "0"}}],
    "GET /api/v1/schedules/{schedule_id}": [{}],
    "PATCH /api/v1/schedules/{schedule_id}": [{"json": {"enabled": False, "cron": "* * * * *"}}],
    "DELETE /api/v1/schedules/{schedule_id}": [{}],
    "POST /api/v1/schedules/{schedule_id}/trigger": [{}],
    "GET /assistants/{assistant_id}": [{}],
    "PATCH /assistants/{assistant_id}": [{"json": {"metadata": {"taken": True}, "name": "bob's"}}],
    "DELETE /assistants/{assistant_id}": [{}],
    "GET /assistants/{assistant_id}/graph": [{}, {"query": {"xray": "true"}}],
    "GET /assistants/{assistant_id}/schemas": [{}],
    "GET /assistants/{assistant_id}/subgraphs": [{}, {"query": {"recurse": "true"}}],
    "GET /assistants/{assistant_id}/subgraphs/{namespace}": [{}],
    "POST /assistants/{assistant_id}/versions": [{"json": {}}],
    "POST /assistants/{assistant_id}/latest": [{"json": {"version": 1}}],
    "GET /threads/{thread_id}": [{}],
    "PATCH /threads/{thread_id}": [{"json": {"metadata": {"taken": True}}}],
    "DELETE /threads/{thread_id}": [{}],
    "POST /threads/{thread_id}/copy": [{"json": {}}],
    "GET /threads/{thread_id}/state": [{}],
    "POST /threads/{thread_id}/state": [{"json": {"values": {"messages": [{"role": "user", "content": "bob"}]}}}],
    "POST /threads/{thread_id}/state/checkpoint": [{"json": {"checkpoint": {"checkpoint_id": "{checkpoint_id}"}}}],
    "GET /threads/{thread_id}/state/{checkpoint_id}": [{}],
    "GET /threads/{thread_id}/history": [{}],
    "POST /threads/{thread_id}/history": [{"json": {}}],
    "GET /threads/{thread_id}/stream": [{}, {"headers": {"HTTP_LAST_EVENT_ID": "-"}}],
    "GET /threads/{thread_id}/runs": [{}],
    "POST /threads/{thread_id}/runs": [{"json": RUN_BODY}, {"json": {**RUN_BODY, "if_not_exists": "create"}}],
    "POST /threads/{thread_id}/runs/wait": [{"json": RUN_BODY}, {"json": {**RUN_BODY, "if_not_exists": "create"}}],
    "POST /threads/{thread_id}/runs/stream": [{"json": RUN_BODY}, {"json": {**RUN_BODY, "if_not_exists": "create"}}],
    "GET /threads/{thread_id}/runs/{run_id}": [{}],
    "DELETE /threads/{thread_id}/runs/{run_id}": [{}],
    "GET /threads/{thread_id}/runs/{run_id}/join": [{}],
    "GET /threads/{thread_id}/runs/{run_id}/stream": [{}, {"headers": {"HTTP_LAST_EVENT_ID": "-1"}}],
    "POST /threads/{thread_id}/runs/{run_id}/cancel": [
        {}, {"query": {"action": "rollback"}}, {"query": {"wait": "true"}},
    ],
    "GET /threads/{thread_id}/storage": [{}],
    "POST /threads/{thread_id}/stream/events": [
        {"json": {"channels": ["lifecycle", "values"]}}, {"json": {"channels": ["values"], "since": 0}},
    ],
    "POST /threads/{thread_id}/commands": [
        {"json": {"id": 1, "method": "run.start", "params": {"assistant_id": "echo", "input": RUN_BODY["input"]}}},
        {"json": {"id": 2, "method": "state.get", "params": {"namespace": []}}},
        {"json": {"id": 3, "method": "agent.getTree", "params": {}}},
        {"json": {"id": 4, "method": "input.respond", "params": {"interrupt_id": "x", "namespace": [], "response": 1}}},
    ],
    "POST /a2a/{assistant_id}": [
        {"json": {"jsonrpc": "2.0", "id": "1", "method": "message/send", "params": {
            "message": {"role": "user", "messageId": "m", "parts": [{"kind": "text", "text": "bob"}]},
        }}},
    ],
    "POST /threads/{thread_id}/runs/crons": [{"json": {"assistant_id": "echo", "schedule": "0 0 1 1 *"}}],
    "GET /runs/crons/{cron_id}": [{}],
    "PATCH /runs/crons/{cron_id}": [{"json": {"enabled": False, "schedule": "* * * * *"}}],
    "DELETE /runs/crons/{cron_id}": [{}],
}
# Like the real server, a join of a run the caller cannot see is a 200 reporting it missing: the
# same answer as for a run that does not exist.
ANSWERS_NOT_FOUND_WITH_200 = {
    "GET /threads/{thread_id}/runs/{run_id}/join",
    "GET /threads/{thread_id}/runs/{run_id}/stream",
}
# Reported bugs, by "METHOD path": the test fails when one of them is fixed, so the entry goes.
KNOWN_BUGS: dict[str, str] = {}


def _id_routes() -> list[Route]:
    return [route for route in api_routes() if route.parameters]


def _body(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response).decode(errors="replace")
    return response.content.decode(errors="replace")


def _send(client: APIClient, method: str, path: str, request: dict[str, Any], ids: dict[str, str]) -> Any:
    query = "&".join(f"{k}={v}" for k, v in request.get("query", {}).items())
    url = path + (f"?{query}" if query else "")
    body = request.get("json", {} if method in ("post", "patch", "put") else None)
    if body is not None:
        body = _fill(body, ids)
    return getattr(client, method)(url, body, format="json", **request.get("headers", {}))


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.strip("{}") in ids:
        return ids[value.strip("{}")]
    if isinstance(value, dict):
        return {key: _fill(item, ids) for key, item in value.items()}
    return value


@pytest.fixture
def clients(django_user_model: Any) -> tuple[APIClient, APIClient]:
    """Alice's and Bob's API clients (users without a password: hashing one is slow)."""
    made = []
    for name in ("alice", "bob"):
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_X_API_KEY=api_key_create(user=django_user_model.objects.create(username=name))[1])
        made.append(client)
    return made[0], made[1]


@pytest.fixture
def alices(clients: tuple[APIClient, APIClient]) -> dict[str, str]:
    """Alice's objects, by the path parameter names that address them."""
    api = clients[0]
    meta = {"marker": MARKER}
    assistant = api.post("/assistants", {"graph_id": "echo", "metadata": meta, "name": MARKER}, format="json")
    thread = api.post("/threads", {"metadata": meta}, format="json")
    assert assistant.status_code == thread.status_code == 200
    thread_id = thread.json()["thread_id"]
    run = api.post(
        f"/threads/{thread_id}/runs",
        {
            "assistant_id": assistant.json()["assistant_id"],
            "input": {"messages": [{"role": "user", "content": MARKER}]},
            "metadata": meta,
        },
        format="json",
    )
    assert run.status_code == 200, run.content
    state = api.post(
        f"/threads/{thread_id}/state",
        {"values": {"messages": [{"role": "user", "content": MARKER}]}},
        format="json",
    )
    assert state.status_code == 200, state.content
    execution = api.post(
        "/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": meta}, format="json"
    )
    assert execution.status_code == 201, execution.content
    schedule = api.post(
        "/api/v1/schedules",
        {"type": "agent", "target_id": "echo", "inputs": meta, "cron": "0 0 1 1 *"},
        format="json",
    )
    assert schedule.status_code == 201, schedule.content
    cron = api.post(
        f"/threads/{thread_id}/runs/crons",
        {"assistant_id": assistant.json()["assistant_id"], "schedule": "0 0 1 1 *", "metadata": meta},
        format="json",
    )
    assert cron.status_code == 200, cron.content
    return {
        "assistant_id": assistant.json()["assistant_id"],
        "thread_id": thread_id,
        "run_id": run.json()["run_id"],
        "checkpoint_id": state.json()["checkpoint_id"],
        "pk": execution.json()["execution_id"],
        "schedule_id": schedule.json()["schedule_id"],
        "cron_id": cron.json()["cron_id"],
        "namespace": "echo",
    }


def _rows() -> list[Any]:
    return [
        sorted(
            Thread.objects.values_list(
                "pk", "owner_id", "metadata", "status", "values", "updated_at"
            )
        ),
        sorted(
            Run.objects.values_list(
                "pk", "thread_id", "status", "cancel_requested_at", "updated_at"
            )
        ),
        sorted(
            Assistant.objects.values_list("pk", "owner_id", "version", "metadata", "updated_at")
        ),
        sorted(Execution.objects.values_list("pk", "status", "cancelled_at")),
        sorted(Schedule.objects.values_list("pk", "enabled", "cron", "next_run_at", "updated_at")),
        sorted(Cron.objects.values_list("pk", "enabled", "schedule", "next_run_date", "updated_at")),
    ]


def test_every_route_with_an_id_is_covered() -> None:
    """The table names only routes that exist, so it cannot silently test nothing."""
    served = {f"{m.upper()} {route.path}" for route in _id_routes() for m in HTTP_METHODS}
    assert set(REQUESTS) | set(KNOWN_BUGS) <= served, (set(REQUESTS) | set(KNOWN_BUGS)) - served
    assert len(_id_routes()) >= 20


@pytest.mark.parametrize("route", _id_routes(), ids=lambda route: route.path)
def test_another_users_id_is_not_found(
    route: Route, clients: tuple[APIClient, APIClient], alices: dict[str, str]
) -> None:
    failures = {}
    for method in HTTP_METHODS:
        key = f"{method.upper()} {route.path}"
        try:
            _check_method(key, route, method, clients, alices)
        except AssertionError as error:
            failures[key] = str(error)
    known = {key for key in KNOWN_BUGS if key.split(" ", 1)[1] == route.path}
    assert set(failures) == known, {
        key: failures.get(key, "fixed: drop it from KNOWN_BUGS") for key in set(failures) ^ known
    }


def _check_method(
    key: str,
    route: Route,
    method: str,
    clients: tuple[APIClient, APIClient],
    alices: dict[str, str],
) -> None:
    alice, bob = clients
    path = route.path.format(**alices)
    requests = REQUESTS.get(key)
    if requests is None:
        # Not in the table: only acceptable if nobody is served this method here.
        as_bob, as_alice = (
            _send(bob, method, path, {}, alices),
            _send(alice, method, path, {}, alices),
        )
        assert (as_bob.status_code, as_alice.status_code) == (405, 405), (
            f"{key} is served ({as_bob.status_code} to Bob, {as_alice.status_code} to Alice): "
            "add Bob's request for it to REQUESTS"
        )
        return
    before = _rows()
    for request in requests:
        response = _send(bob, method, path, request, alices)
        body = _body(response)
        assert MARKER not in body, f"{key}: Alice's data in Bob's answer: {body[:500]}"
        leaked = [
            value
            for name, value in alices.items()
            if name != "namespace" and value in body and f"{{{name}}}" not in route.path
        ]
        assert not leaked, f"{key}: Alice's ids {leaked} in Bob's answer: {body[:500]}"
        if key in ANSWERS_NOT_FOUND_WITH_200:
            missing = _send(
                bob,
                method,
                route.path.format(**{k: str(uuid.uuid4()) for k in alices}),
                request,
                alices,
            )
            assert response.status_code == missing.status_code == 200, (
                response.status_code,
                body[:300],
            )
            assert body == _body(missing), body[:300]
            assert "404: Run not found" in body
        else:
            assert response.status_code == 404, (
                f"{key} {request}: {response.status_code} {body[:300]}"
            )
    assert _rows() == before, f"{key}: Bob's request changed Alice's rows"
