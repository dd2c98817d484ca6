"""A run create's written-out statements: what they must still do as the ORM's did."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs import services, statements
from runs.errors import NotFound
from runs.graphs import graph_ids, system_assistant_id
from runs.models import Assistant, Run, RunStatus, Thread, ThreadStatus

pytestmark = pytest.mark.django_db

RUN = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}


def post(client, path: str, body=None):
    return client.post(path, {} if body is None else body, format="json")


def test_a_deleted_system_assistant_is_made_again_by_the_next_run_create(api, alice) -> None:
    thread_id = post(api, "/threads").json()["thread_id"]
    assert post(api, f"/threads/{thread_id}/runs", RUN).status_code == 200
    echo = system_assistant_id("echo")
    Assistant.objects.filter(pk=echo).delete()  # its runs go with it

    again = post(api, f"/threads/{thread_id}/runs", RUN)
    assert again.status_code == 200, again.content
    assert again.json()["assistant_id"] == str(echo)
    assert Assistant.objects.get(pk=echo).owner is None
    assert Run.objects.get(pk=again.json()["run_id"]).assistant_id == echo
    stateless = post(api, "/runs", RUN)  # the same for a new temporary thread
    assert stateless.status_code == 200 and stateless.json()["assistant_id"] == str(echo)


def test_the_threads_metadata_follows_the_assistant_of_its_latest_run(api, alice) -> None:
    thread_id = post(api, "/threads", {"metadata": {"mine": 1}}).json()["thread_id"]
    assert post(api, f"/threads/{thread_id}/runs", RUN).status_code == 200
    thread = api.get(f"/threads/{thread_id}").json()
    echo = str(system_assistant_id("echo"))
    assert thread["metadata"] == {"mine": 1, "graph_id": "echo", "assistant_id": echo}
    assert thread["status"] == ThreadStatus.BUSY

    custom = post(api, "/assistants", {"graph_id": "steps"}).json()["assistant_id"]
    assert post(api, f"/threads/{thread_id}/runs", {**RUN, "assistant_id": custom}).status_code == 200
    metadata = api.get(f"/threads/{thread_id}").json()["metadata"]
    assert metadata == {"mine": 1, "graph_id": "steps", "assistant_id": custom}


def test_if_not_exists_create_makes_the_thread_once_and_only_for_its_owner(api, bob_api, alice) -> None:
    thread_id = str(uuid.uuid4())
    body = {**RUN, "if_not_exists": "create"}
    first = post(api, f"/threads/{thread_id}/runs", body)
    assert first.status_code == 200 and first.json()["thread_id"] == thread_id
    assert post(api, f"/threads/{thread_id}/runs", body).status_code == 200
    thread = Thread.objects.get(pk=thread_id)
    assert (thread.owner, thread.temporary, thread.status) == (alice, False, ThreadStatus.BUSY)
    assert thread.runs.count() == 2
    # Another user's thread id is not found, whatever if_not_exists says.
    refused = post(bob_api, f"/threads/{thread_id}/runs", body)
    assert refused.status_code == 404
    assert thread.runs.count() == 2


def test_the_active_runs_cap_is_answered_before_a_missing_thread(api, alice, settings) -> None:
    settings.RUNS_MAX_ACTIVE_PER_USER = 1
    assert post(api, "/runs", RUN).status_code == 200
    refused = post(api, f"/threads/{uuid.uuid4()}/runs", RUN)
    assert refused.status_code == 429
    assert "RUNS_MAX_ACTIVE_PER_USER" in refused.json()["detail"]
    settings.RUNS_MAX_ACTIVE_PER_USER = 2
    assert post(api, f"/threads/{uuid.uuid4()}/runs", RUN).status_code == 404


def test_a_user_assistant_deleted_before_the_create_is_not_found(api, alice) -> None:
    thread_id = post(api, "/threads").json()["thread_id"]
    custom = post(api, "/assistants", {"graph_id": "echo"}).json()["assistant_id"]
    assert api.delete(f"/assistants/{custom}").status_code == 204
    refused = post(api, f"/threads/{thread_id}/runs", {**RUN, "assistant_id": custom})
    assert refused.status_code == 404
    assert not Run.objects.filter(thread_id=thread_id).exists()


def test_a_stateless_run_gets_a_busy_temporary_thread_with_its_assistant(api, alice) -> None:
    run = post(api, "/runs", RUN).json()
    thread = Thread.objects.get(pk=run["thread_id"])
    assert (thread.owner, thread.temporary, thread.status) == (alice, True, ThreadStatus.BUSY)
    assert thread.metadata == {"graph_id": "echo", "assistant_id": str(system_assistant_id("echo"))}
    assert Run.objects.get(pk=run["run_id"]).status == RunStatus.PENDING


def test_a_run_create_on_a_thread_is_a_few_written_out_statements(alice, settings) -> None:
    thread = services.thread_create(owner=alice)
    services.run_create(owner=alice, body=RUN, thread_id=thread.pk)  # reads the system assistant
    with CaptureQueriesContext(connection) as queries:
        run = services.run_create(owner=alice, body=RUN, thread_id=thread.pk)
    statements = [
        query["sql"] for query in queries.captured_queries
        if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "BEGIN"))
    ]
    # Mark the thread busy (with the cap's count and the assistant's presence), insert the run,
    # and with the ORM broker its queue row in the same transaction.
    queue = 1 if not settings.REDIS_URL else 0
    assert len(statements) == 2 + queue, statements
    assert Run.objects.get(pk=run.pk).kwargs == run.kwargs
    assert Thread.objects.get(pk=thread.pk).status == ThreadStatus.BUSY


def test_an_edited_langgraph_json_is_read_again(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({"graphs": {"one": "runs.demo_graphs:echo"}}))
    monkeypatch.setenv("LANGGRAPH_CONFIG", str(config))
    assert graph_ids()[-1] == "one"
    assert graph_ids()[-1] == "one"
    config.write_text(json.dumps({"graphs": {"two": "runs.demo_graphs:echo"}}))
    later = time.time() + 5  # a new mtime even on a coarse clock
    os.utime(config, (later, later))
    assert graph_ids()[-1] == "two"


def test_without_returning_the_thread_is_read_then_marked_busy(alice, bob, monkeypatch) -> None:
    # SQLite before 3.35 has no UPDATE .. RETURNING: the same answers from a read and an update.
    monkeypatch.setattr(statements, "can_return", lambda: False)
    thread = services.thread_create(owner=alice, metadata={"mine": 1})
    with CaptureQueriesContext(connection) as queries:
        run = services.run_create(owner=alice, body=RUN, thread_id=thread.pk)
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert updates and not [sql for sql in updates if "RETURNING" in sql]
    thread.refresh_from_db()
    assert thread.status == ThreadStatus.BUSY and thread.metadata["mine"] == 1
    assert thread.metadata["assistant_id"] == str(run.assistant_id)
    with pytest.raises(NotFound):
        services.run_create(owner=bob, body=RUN, thread_id=thread.pk)
    assert Run.objects.filter(thread=thread).count() == 1
