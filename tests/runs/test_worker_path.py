"""The worker's path through a run, in-process: how few statements it takes, that the thread state
it records is the checkpointed one, the hand-over to the thread's next run, and the event loop it
keeps from run to run."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from runs import dispatch, services, tasks
from runs.models import Run, RunStatus, Thread, ThreadStatus

pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@pytest.fixture
def thread(alice):
    yield services.thread_create(owner=alice)
    # The worker's async database calls ran in asgiref's shared thread: close its connection.
    asyncio.run(sync_to_async(connections.close_all)())


def create(owner, thread, graph: str = "echo", **body) -> Run:
    return services.run_create(owner=owner, body={"assistant_id": graph, **body}, thread_id=thread.pk)


def echo_input(text: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": text}]}}


def test_a_run_takes_few_statements_on_the_workers_connection(alice, thread):
    create(alice, thread, **echo_input("warm up"))  # the thread's first run reads no state
    tasks.run_execute(str(Run.objects.get(thread=thread).pk))
    run = create(alice, thread, **echo_input("hi"))

    with CaptureQueriesContext(connection) as queries:
        assert tasks.run_execute(str(run.pk)) == RunStatus.SUCCESS

    statements = [
        q["sql"] for q in queries.captured_queries if not q["sql"].upper().startswith(TRANSACTION_CONTROL)
    ]
    # The claim, the run, then one transaction for the end: the thread's lock, the run's status,
    # its final events, its on_completion, the thread's next run and the thread's state. The
    # graph's checkpoints and events go through another thread's connection.
    assert len(statements) <= 9, "\n".join(statements)


def test_the_thread_state_recorded_is_the_checkpointed_one(alice, thread, settings):
    settings.RUNS_GRAPHS = {**settings.RUNS_GRAPHS, "hitl": "runs.demo_graphs:hitl"}
    for text in ("one", "two"):
        run = create(alice, thread, **echo_input(text))
        tasks.run_execute(str(run.pk))
    stored = Thread.objects.get(pk=thread.pk)
    state = services.thread_state(thread=stored)
    assert stored.values == state["values"]
    assert [m["content"] for m in stored.values["messages"]] == ["one", "echo: one", "two", "echo: two"]
    assert (stored.status, stored.interrupts, stored.error) == (ThreadStatus.IDLE, {}, None)

    paused = services.thread_create(owner=alice)
    run = create(alice, paused, graph="hitl", input={})
    tasks.run_execute(str(run.pk))
    stored = Thread.objects.get(pk=paused.pk)
    state = services.thread_state(thread=stored)
    assert stored.status == ThreadStatus.INTERRUPTED and state["next"] == ["ask"]
    assert stored.interrupts == {task["id"]: task["interrupts"] for task in state["tasks"]}
    assert stored.interrupts and list(stored.interrupts.values())[0][0]["value"] == {"question": "approve?"}

    failed = services.thread_create(owner=alice)
    run = create(alice, failed, **echo_input("fail"))
    tasks.run_execute(str(run.pk))
    stored = Thread.objects.get(pk=failed.pk)
    assert stored.status == ThreadStatus.ERROR
    assert stored.error == {"error": "ValueError", "message": "boom requested"}


def test_the_thread_stays_busy_and_its_next_run_is_queued_when_a_run_ends(alice, thread, monkeypatch):
    queued: list[str] = []
    monkeypatch.setattr(dispatch, "run_enqueue", lambda run_id: queued.append(str(run_id)))
    first = create(alice, thread, **echo_input("first"))
    second = create(alice, thread, **echo_input("second"))
    queued.clear()

    tasks.run_execute(str(first.pk))
    assert queued == [str(second.pk)]
    assert Thread.objects.get(pk=thread.pk).status == ThreadStatus.BUSY
    assert Run.objects.get(pk=second.pk).status == RunStatus.PENDING

    tasks.run_execute(str(second.pk))
    assert queued == [str(second.pk)]  # nothing left to start
    assert Thread.objects.get(pk=thread.pk).status == ThreadStatus.IDLE


def test_a_delayed_run_is_not_queued_early_but_keeps_the_thread_busy(alice, thread, monkeypatch):
    queued: list[str] = []
    monkeypatch.setattr(dispatch, "run_enqueue", lambda run_id: queued.append(str(run_id)))
    first = create(alice, thread, **echo_input("now"))
    create(alice, thread, after_seconds=600, **echo_input("later"))
    queued.clear()

    tasks.run_execute(str(first.pk))
    assert queued == []  # its own delayed task starts it when due
    assert Thread.objects.get(pk=thread.pk).status == ThreadStatus.BUSY


def test_the_worker_keeps_its_event_loop_and_cancels_what_a_run_left_behind():
    cancelled: list[bool] = []

    async def leaves_a_task() -> asyncio.AbstractEventLoop:
        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    first_loop = tasks._run_in_loop(leaves_a_task())
    assert cancelled == [True]
    assert tasks._run_in_loop(leaves_a_task()) is first_loop
    assert cancelled == [True, True]


def test_a_run_wakes_its_waiters_once_and_its_stream_readers_as_it_goes(alice, thread, monkeypatch):
    from runs import wakeups

    published: list[str] = []
    monkeypatch.setattr(wakeups, "publish_on_commit", published.append)
    run = create(alice, thread, **echo_input("hi"))
    published.clear()

    tasks.run_execute(str(run.pk))

    status = wakeups.run_status_channel(run.pk)
    assert published.count(status) == 1 and published[-3:].count(status) == 1  # at its end only
    assert published.count(wakeups.run_channel(run.pk)) >= 3  # start, events, end
    assert wakeups.thread_channel(thread.pk) in published


def test_the_run_status_version_moves_with_the_status_not_with_events(alice, thread):
    from runs.wakeups import RUN_STATUS_KIND
    from project.event_hub import _version_probes

    probe = _version_probes[RUN_STATUS_KIND]
    run = create(alice, thread, **echo_input("hi"))
    pending = probe([str(run.pk)])[str(run.pk)]
    assert tasks.claim(run.pk)
    running = probe([str(run.pk)])[str(run.pk)]
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
    ended = probe([str(run.pk)])[str(run.pk)]
    assert len({pending, running, ended}) == 3
    assert probe(["01a20786-0000-7000-8000-000000000000"]) == {}  # gone


def test_runs_are_queued_through_one_broker_whatever_the_thread():
    # Under ASGI each request runs in a thread of its own: a broker per thread was a new Redis
    # connection per run created.
    import threading

    brokers = []
    threads = [threading.Thread(target=lambda: brokers.append(dispatch._broker())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in brokers}) == 1 and brokers[0] is dispatch._broker()
