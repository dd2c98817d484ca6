"""The runs API in-process: contract with langgraph-openapi.json, error texts, scoping, claims."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone
from jsonschema import Draft202012Validator

from runs import services
from runs.models import MultitaskStrategy, Run, RunStatus, Thread, ThreadStatus
from runs.tasks import claim
from runs.validation import components

pytestmark = pytest.mark.django_db


def spec_enum(schema: str, field: str) -> list[str]:
    return components()[schema]["properties"][field]["enum"]


def assert_matches(schema: str, value: dict) -> None:
    # OpenAPI 3.0 "nullable" is not JSON Schema: check such fields only when they hold a value.
    properties = components()[schema].get("properties", {})
    value = {k: v for k, v in value.items() if not (v is None and properties.get(k, {}).get("nullable"))}
    root = {"$ref": f"#/components/schemas/{schema}", "components": {"schemas": components()}}
    errors = list(Draft202012Validator(root).iter_errors(value))
    assert not errors, [e.message for e in errors]


def test_status_enums_equal_the_spec() -> None:
    assert RunStatus.values == spec_enum("Run", "status")
    assert ThreadStatus.values == spec_enum("Thread", "status")
    assert sorted(MultitaskStrategy.values) == sorted(spec_enum("Run", "multitask_strategy"))
    assert ThreadStatus.values == spec_enum("ThreadSearchRequest", "status")


def test_shapes_match_the_spec(api) -> None:
    assistants = api.post("/assistants/search", {}, format="json")
    assert assistants.status_code == 200
    assert {a["graph_id"] for a in assistants.json()} == {"echo", "hitl", "steps", "chat", "nested"}
    for assistant in assistants.json():
        assert_matches("Assistant", assistant)
        assert list(assistant) == [
            "assistant_id", "graph_id", "config", "context", "metadata", "name", "created_at",
            "updated_at", "version", "description",
        ]
    thread = api.post("/threads", {"metadata": {"a": 1}}, format="json").json()
    # The real server answers "values": null for a fresh thread, which the spec's type omits.
    assert thread["values"] is None
    assert_matches("Thread", {key: value for key, value in thread.items() if key != "values"})
    assert list(thread) == [
        "thread_id", "created_at", "updated_at", "state_updated_at", "metadata", "status",
        "config", "values",
    ]
    assert thread["created_at"].endswith("+00:00")
    run = api.post(f"/threads/{thread['thread_id']}/runs", {"assistant_id": "echo"}, format="json")
    assert run.status_code == 200
    assert_matches("Run", run.json())
    assert run["Content-Location"] == f"/threads/{thread['thread_id']}/runs/{run.json()['run_id']}"
    kwargs = run.json()["kwargs"]
    assert kwargs["stream_mode"] == ["values"] and kwargs["temporary"] is False
    assert kwargs["config"]["configurable"]["graph_id"] == "echo"
    state = api.get(f"/threads/{thread['thread_id']}/state").json()
    assert state == {
        "values": {}, "next": [], "tasks": [], "metadata": None, "created_at": None,
        "checkpoint": None, "parent_checkpoint": None, "interrupts": [], "checkpoint_id": None,
        "parent_checkpoint_id": None,
    }


def test_system_assistant_ids_are_the_real_servers(api) -> None:
    response = api.get("/assistants/046b5dc7-2108-582c-9c6c-31d556d138f0")
    assert response.json()["name"] == "echo"
    assert response.json()["metadata"] == {"created_by": "system"}
    assert api.get("/assistants/echo").json() == {"detail": "Invalid assistant ID: must be a UUID"}


def test_error_texts(api) -> None:
    unknown = uuid.uuid4()
    assert api.get(f"/threads/{unknown}").json() == {"detail": f"Thread with ID {unknown} not found"}
    assert api.patch(f"/threads/{unknown}", {}, format="json").json() == {"detail": "Not Found"}
    assert api.get(f"/threads/{unknown}/state").status_code == 404
    assert api.get(f"/assistants/{unknown}").json() == {"detail": "Not Found"}
    deleted = api.delete(f"/assistants/{unknown}")
    assert (deleted.status_code, deleted.json()) == (404, {"detail": f"Assistant with ID {unknown} not found"})
    assert api.post("/assistants", {"graph_id": "nope"}, format="json").json() == {
        "detail": "Graph 'nope' not found. Expected one of: ['echo', 'hitl', 'steps', 'chat', 'nested']"
    }
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    duplicate = api.post("/threads", {"thread_id": thread_id}, format="json")
    assert (duplicate.status_code, duplicate.json()) == (
        409, {"detail": f"Thread with ID {thread_id} already exists"}
    )
    assert api.post("/threads", {"thread_id": thread_id, "if_exists": "do_nothing"}, format="json").status_code == 200
    bad_run = api.post(f"/threads/{thread_id}/runs", {"assistant_id": "nope"}, format="json")
    assert (bad_run.status_code, bad_run.json()["detail"]) == (
        422,
        (
            "Invalid assistant: 'nope'. Must be either:\n- A valid assistant UUID, or\n"
            "- One of the registered graphs: echo, hitl, steps, chat, nested"
        ),
    )
    missing = api.post(f"/threads/{unknown}/runs", {"assistant_id": "echo"}, format="json")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Thread or assistant not found."})
    enum = api.post(
        f"/threads/{thread_id}/runs", {"assistant_id": "echo", "multitask_strategy": "x"}, format="json"
    )
    assert enum.status_code == 422 and enum.json()["detail"].startswith('"x" is not one of')
    empty = api.generic("POST", f"/threads/{thread_id}/runs", b"", content_type="application/json")
    assert empty.json() == {"detail": "Invalid JSON in request body"}
    resume = api.post("/runs", {"assistant_id": "echo", "command": {"resume": 1}}, format="json")
    assert (resume.status_code, resume.json()) == (400, {"detail": "You must provide a thread_id when resuming."})
    select = api.get(f"/threads/{thread_id}/runs?select=run_id&select=nope")
    assert select.status_code == 422 and select.json()["detail"].startswith("Invalid select columns: ['nope']")
    search_select = api.post("/threads/search", {"select": ["nope"]}, format="json")
    assert search_select.status_code == 422 and "is not one of" in search_select.json()["detail"]
    both = api.post(
        "/runs/cancel", {"status": "pending", "thread_id": thread_id, "run_ids": []}, format="json"
    )
    assert both.status_code == 422 and both.json()["detail"].startswith("When providing a 'status'")


def test_json_under_any_content_type_and_unknown_fields_ignored(api) -> None:
    response = api.generic(
        "POST", "/threads", json.dumps({"metadata": {"k": "v"}, "foo": 1}), content_type="text/plain"
    )
    assert response.status_code == 200 and response.json()["metadata"] == {"k": "v"}


def test_search_pagination_headers_and_count(api) -> None:
    for index in range(3):
        api.post("/threads", {"metadata": {"n": index, "group": "g"}}, format="json")
    page = api.post("/threads/search", {"metadata": {"group": "g"}, "limit": 2}, format="json")
    assert page["X-Pagination-Total"] == "3" and page["X-Pagination-Next"] == "2"
    assert [t["metadata"]["n"] for t in page.json()] == [2, 1]
    ascending = api.post("/threads/search", {"sort_by": "created_at", "sort_order": "asc"}, format="json")
    assert [t["metadata"]["n"] for t in ascending.json()] == [0, 1, 2]
    assert api.post("/threads/count", {"metadata": {"n": 1}}, format="json").json() == 1
    assert api.post("/assistants/count", {}, format="json").json() == 5  # the system assistants of the demo graphs


def test_search_offsets_beyond_a_database_integer_are_a_422(api) -> None:
    for path in ("/threads/search", "/assistants/search"):
        too_far = api.post(path, {"offset": 2**63}, format="json")
        assert too_far.status_code == 422, too_far.content
        assert too_far.json()["detail"] == f'"offset" {2**63} is greater than the maximum of {2**63 - 1}'
        assert api.post(path, {"offset": 2**63 - 1}, format="json").json() == []


def test_owner_scoping_and_auth(api, bob_api, client) -> None:
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    run_id = api.post(f"/threads/{thread_id}/runs", {"assistant_id": "echo"}, format="json").json()["run_id"]
    assert bob_api.get(f"/threads/{thread_id}").status_code == 404
    assert bob_api.get(f"/threads/{thread_id}/runs/{run_id}").status_code == 404
    assert bob_api.post(f"/threads/{thread_id}/runs", {"assistant_id": "echo"}, format="json").status_code == 404
    assert bob_api.post(f"/threads/{thread_id}/runs/{run_id}/cancel").status_code == 404
    assert bob_api.post("/threads/search", {}, format="json").json() == []
    assistant_id = api.post("/assistants", {"graph_id": "echo"}, format="json").json()["assistant_id"]
    assert bob_api.get(f"/assistants/{assistant_id}").status_code == 404
    # A thread id that exists for someone else cannot be taken over with if_not_exists=create.
    taken = bob_api.post(
        f"/threads/{thread_id}/runs", {"assistant_id": "echo", "if_not_exists": "create"}, format="json"
    )
    assert taken.status_code == 404
    anonymous = client.get(f"/threads/{thread_id}")
    assert anonymous.status_code in (401, 403) and "detail" in anonymous.json()
    assert client.get("/ok").json() == {"ok": True}


def test_run_create_makes_thread_busy_and_reject_conflicts(api) -> None:
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    first = api.post(f"/threads/{thread_id}/runs", {"assistant_id": "echo"}, format="json").json()
    assert first["status"] == "pending"
    assert api.get(f"/threads/{thread_id}").json()["status"] == "busy"
    rejected = api.post(
        f"/threads/{thread_id}/runs", {"assistant_id": "echo", "multitask_strategy": "reject"}, format="json"
    )
    assert (rejected.status_code, rejected.json()) == (
        409,
        {"detail": "Thread is already running a task. Wait for it to finish or choose a different "
                   "multitask strategy."},
    )
    # Cancelling the pending run (no worker involved) ends it at once and frees the thread.
    cancelled = api.post(f"/threads/{thread_id}/runs/{first['run_id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.content == b""
    assert api.get(f"/threads/{thread_id}/runs/{first['run_id']}").json()["status"] == "interrupted"
    assert api.get(f"/threads/{thread_id}").json()["status"] == "idle"
    again = api.post(f"/threads/{thread_id}/runs/{first['run_id']}/cancel")
    assert again.status_code == 404


def test_rollback_of_pending_run_deletes_it(api) -> None:
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    run_id = api.post(f"/threads/{thread_id}/runs", {"assistant_id": "echo"}, format="json").json()["run_id"]
    assert api.post(f"/threads/{thread_id}/runs/{run_id}/cancel?action=rollback").status_code == 202
    assert api.get(f"/threads/{thread_id}/runs/{run_id}").json() == {"detail": "Not Found"}
    assert api.delete(f"/threads/{thread_id}/runs/{run_id}").json() == {"detail": "Run not found"}


def test_after_seconds_puts_created_at_in_the_future(api) -> None:
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    run = api.post(
        f"/threads/{thread_id}/runs", {"assistant_id": "echo", "after_seconds": 30}, format="json"
    ).json()
    assert run["created_at"] > run["updated_at"]
    assert run["kwargs"]["config"]["configurable"]["__after_seconds__"] == 30


def _run(alice, thread: Thread, **fields) -> Run:
    assistant = services.assistant_for_run(user=alice, assistant_id="echo")
    return Run.objects.create(thread=thread, assistant=assistant, owner=alice, **fields)


def test_database_allows_one_running_run_per_thread(alice) -> None:
    thread = services.thread_create(owner=alice)
    _run(alice, thread, status=RunStatus.RUNNING)
    with pytest.raises(IntegrityError), transaction.atomic():
        _run(alice, thread, status=RunStatus.RUNNING)
    _run(alice, services.thread_create(owner=alice), status=RunStatus.RUNNING)


def test_claim_is_fifo_per_thread_and_respects_the_running_run(alice) -> None:
    thread = services.thread_create(owner=alice)
    now = timezone.now()
    older = _run(alice, thread, created_at=now - timedelta(seconds=2))
    younger = _run(alice, thread, created_at=now - timedelta(seconds=1))
    delayed = _run(alice, services.thread_create(owner=alice), created_at=now + timedelta(minutes=5))
    assert not claim(younger.pk)  # an older pending run of the thread goes first
    assert claim(older.pk)
    assert not claim(older.pk)  # claims are conditional: a redelivered id does nothing
    assert not claim(younger.pk)  # the thread is running `older`: the unique index says no
    assert Run.objects.get(pk=younger.pk).status == RunStatus.PENDING
    assert not claim(delayed.pk)  # not due yet
