"""/wait and /join in-process: what they answer for a run that ends, one cancelled before it
started and one that does not exist, and how often they read the run while it goes on."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections
from django.test import AsyncClient

from runs import services, tasks
from runs.models import Run, RunStatus
from runs.services import waiting

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def close_worker_connections():
    yield
    # The worker's async database calls ran in asgiref's shared thread: close its connection.
    asyncio.run(sync_to_async(connections.close_all)())


def in_own_thread(work) -> None:
    try:
        work()
    finally:
        connections.close_all()  # else PostgreSQL keeps the session, and the test database


def join(api, thread_id, run_id, *, during=None) -> tuple[int, dict]:
    """GET .../join; ``during()`` runs in a thread once the response has started."""

    async def go() -> tuple[int, dict]:
        response = await AsyncClient().get(
            f"/threads/{thread_id}/runs/{run_id}/join", headers={"x-api-key": api.raw_key}
        )
        worker = threading.Thread(target=in_own_thread, args=(during,)) if during else None
        if worker:
            worker.start()
        body = b"".join([chunk async for chunk in response.streaming_content])
        if worker:
            await asyncio.to_thread(worker.join)
        return response.status_code, json.loads(body)

    return async_to_sync(go)()


def test_a_join_answers_the_runs_result_once_the_worker_ends_it(api, alice):
    thread = services.thread_create(owner=alice)
    run = services.run_create(
        owner=alice, thread_id=thread.pk,
        body={"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}},
    )
    status, body = join(api, thread.pk, run.pk, during=lambda: tasks.run_execute(str(run.pk)))
    assert status == 200
    assert [m["content"] for m in body["messages"]] == ["hi", "echo: hi"]
    assert body == Run.objects.get(pk=run.pk).result


def test_a_join_answers_the_stored_result_as_the_same_json_value(api, alice):
    # Sent as the database holds it, not decoded and encoded again: the same value, whatever
    # JSON can say (integers beyond 64 bits, any text, nested nulls).
    thread = services.thread_create(owner=alice)
    run = services.run_create(owner=alice, thread_id=thread.pk, body={"assistant_id": "echo"})
    result = {
        "messages": [{"content": "é 😀 \u2028 \x1f \" \\", "id": None}],
        "big": 2**70, "small": -(2**63) - 1, "float": 1e-05, "list": [1.5, True, None, {}],
    }
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS, result=result)
    status, body = join(api, thread.pk, run.pk)
    assert status == 200
    assert body == result
    assert isinstance(body["big"], int)


def test_a_join_of_a_run_cancelled_before_it_started_answers_the_threads_values(api, alice):
    thread = services.thread_create(owner=alice)
    first = services.run_create(
        owner=alice, thread_id=thread.pk,
        body={"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "one"}]}},
    )
    tasks.run_execute(str(first.pk))
    pending = services.run_create(owner=alice, thread_id=thread.pk, body={"assistant_id": "echo"})

    def cancel() -> None:
        services.run_cancel(user=alice, thread_id=thread.pk, run_id=pending.pk)

    status, body = join(api, thread.pk, pending.pk, during=cancel)
    assert status == 200
    assert Run.objects.get(pk=pending.pk).status == RunStatus.INTERRUPTED
    assert [m["content"] for m in body["messages"]] == ["one", "echo: one"]


def test_a_join_of_a_missing_run_answers_200_with_the_real_servers_error_body(api, alice):
    thread = services.thread_create(owner=alice)
    status, body = join(api, thread.pk, uuid.uuid4())
    assert status == 200
    assert body == {"__error__": {"error": "HTTPException", "message": "404: Run not found"}}


def test_without_redis_a_waiting_join_reads_the_run_every_poll_interval(api, alice, settings, monkeypatch):
    settings.REDIS_URL = ""
    settings.LOCAL_WAKEUPS_DIR = ""  # no wake-ups at all: the reads are all there is
    settings.RUNS_WAIT_POLL_INTERVAL = 0.05
    reads: list[str | None] = []
    real = waiting.run_state_read

    def counted(run_id):
        state = real(run_id)
        reads.append(state[0])
        return state

    monkeypatch.setattr(waiting, "run_state_read", counted)
    thread = services.thread_create(owner=alice)
    run = services.run_create(
        owner=alice, thread_id=thread.pk,
        body={"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}},
    )

    def end_later() -> None:
        threading.Event().wait(0.5)
        tasks.run_execute(str(run.pk))

    join(api, thread.pk, run.pk, during=end_later)
    assert reads[-1] == RunStatus.SUCCESS
    # About ten reads in half a second, not a busy loop, nor one the end could go unseen by.
    assert 5 <= len(reads) <= 20, reads
