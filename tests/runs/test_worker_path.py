"""The worker's path through a run, in-process: how few statements it takes, that the thread state
it records is the checkpointed one, the hand-over to the thread's next run, and the event loop it
keeps from run to run."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection, connections
from django.test.utils import CaptureQueriesContext

from runs import dispatch, services, tasks
from runs.models import Run, RunEvent, RunStatus, Thread, ThreadStatus

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
    # The claim (which answers the run), the thread's latest checkpoint, then one transaction
    # for the end: the thread's lock (which answers its next run), the run's status (which
    # answers its on_completion), its last and final events, and the thread's state. The
    # graph's other checkpoints and events go through another thread's connection.
    assert len(statements) <= 6, "\n".join(statements)


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

    wakeups_sent: list[tuple[str, ...]] = []
    monkeypatch.setattr(wakeups, "publish_on_commit", lambda *channels: wakeups_sent.append(channels))
    run = create(alice, thread, **echo_input("hi"))
    wakeups_sent.clear()

    tasks.run_execute(str(run.pk))

    status = wakeups.run_status_channel(run.pk)
    with_status = [sent for sent in wakeups_sent if status in sent]
    assert with_status == [wakeups_sent[-1]]  # at its end only
    assert sum(wakeups.run_channel(run.pk) in sent for sent in wakeups_sent) >= 3  # start, events, end
    # The end wakes the run's waiters, its stream and its thread's stream in one message.
    assert set(wakeups_sent[-1]) == {status, wakeups.run_channel(run.pk), wakeups.thread_channel(thread.pk)}


def test_the_run_status_version_moves_with_the_status_not_with_events(alice, thread):
    from project.realtime.event_hub import _version_probes
    from runs.wakeups import RUN_STATUS_KIND

    probe = _version_probes[RUN_STATUS_KIND]
    run = create(alice, thread, **echo_input("hi"))
    pending = probe([str(run.pk)])[str(run.pk)]
    assert tasks.claim(run.pk)
    running = probe([str(run.pk)])[str(run.pk)]
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
    ended = probe([str(run.pk)])[str(run.pk)]
    assert len({pending, running, ended}) == 3
    assert probe(["01a20786-0000-7000-8000-000000000000"]) == {}  # gone


def test_runs_are_queued_through_one_broker_whatever_the_thread(monkeypatch):
    # Under ASGI each request runs in a thread of its own: a broker per thread was a new Redis
    # connection per run created. Runs and executions share the process's one broker.
    from executions import queueing

    used = []
    monkeypatch.setattr(dispatch, "async_task", lambda *args, broker, **kwargs: used.append(broker))
    threads = [threading.Thread(target=dispatch.run_enqueue, args=(f"run-{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(used) == 3 and all(broker is queueing.shared_broker() for broker in used)


def test_a_run_with_durability_sync_stores_each_checkpoint_and_ends_as_any(alice, thread):
    for text in ("one", "two"):
        run = create(alice, thread, durability="sync", **echo_input(text))
        assert tasks.run_execute(str(run.pk)) == RunStatus.SUCCESS
    stored = Thread.objects.get(pk=thread.pk)
    assert [m["content"] for m in stored.values["messages"]] == ["one", "echo: one", "two", "echo: two"]
    assert stored.values == services.thread_state(thread=stored)["values"]


def test_every_event_of_a_run_is_stored_by_its_end_the_last_with_it(alice, thread):
    run = create(alice, thread, stream_mode=["values", "updates"], **echo_input("hi"))
    tasks.run_execute(str(run.pk))
    events = list(RunEvent.objects.filter(run=run).order_by("id").values_list("seq", "event"))
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    names = [name for _, name in events]
    assert names[0] == "metadata" and names[-1] == "metadata"  # run_done, last
    assert names.count("values") == 2 and "updates" in names


def test_a_posted_write_that_fails_fails_the_runs_writes(alice, thread):
    run = tasks.claim_run(create(alice, thread, **echo_input("hi")).pk)
    writes = tasks.RunWrites(run, 0)

    def failing() -> None:
        raise ValueError("could not store it")

    async def go() -> None:
        future = writes.post(failing)
        with pytest.raises(ValueError, match="could not store it"):
            await writes.close()
        assert isinstance(future.exception(), ValueError)

    asyncio.run(go())


def test_work_queued_behind_a_failed_write_fails_with_it(alice, thread):
    # What waited behind a failed write used to wait forever: a read of the run's saver waiting
    # for its saves then hung the worker (seen under the fuzz, runs deleted mid-run).
    run = tasks.claim_run(create(alice, thread, **echo_input("hi")).pk)
    writes = tasks.RunWrites(run, 0)
    writing, release = threading.Event(), threading.Event()

    def failing() -> None:
        writing.set()
        release.wait(5)
        raise ValueError("could not store it")

    async def go() -> None:
        writes.post(failing)
        while not writing.is_set():
            await asyncio.sleep(0.01)
        queued = writes.post(lambda: "stored")
        submitted = asyncio.create_task(writes.submit(lambda: "read", write=False))
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(ValueError, match="could not store it"):
            await writes.drain()
        assert isinstance(queued.exception(), ValueError)
        with pytest.raises(ValueError, match="could not store it"):
            await asyncio.wait_for(submitted, 5)
        with pytest.raises(ValueError, match="could not store it"):
            writes.post(lambda: "refused")

    asyncio.run(go())


def test_a_run_whose_event_writes_fail_ends_in_error(alice, thread, monkeypatch):
    # As when the run is deleted under its worker: the event rows' foreign key fails, each time.
    stored = tasks.RunWrites._store
    calls = []

    def store(self, events):
        calls.append(1)
        if len(calls) > 1:
            raise IntegrityError("the run is gone")
        stored(self, events)

    monkeypatch.setattr(tasks.RunWrites, "_store", store)
    run = create(alice, thread, stream_mode=["values", "updates", "debug"], **echo_input("hi"))
    ended = []
    worker = threading.Thread(target=lambda: ended.append(tasks.run_execute(str(run.pk))), daemon=True)
    worker.start()
    worker.join(20)
    assert ended == [RunStatus.ERROR]
    assert Run.objects.get(pk=run.pk).status == RunStatus.ERROR


def test_without_returning_the_worker_reads_back_what_it_needs(alice, thread, monkeypatch):
    # SQLite before 3.35 has no UPDATE ... RETURNING: the claimed run and its on_completion are
    # read after the UPDATEs instead, to the same end.
    from runs import statements

    monkeypatch.setattr(statements, "can_return", lambda: False)
    for text in ("one", "two"):
        run = create(alice, thread, **echo_input(text))
        assert tasks.run_execute(str(run.pk)) == RunStatus.SUCCESS
    stored = Thread.objects.get(pk=thread.pk)
    assert [m["content"] for m in stored.values["messages"]] == ["one", "echo: one", "two", "echo: two"]
    assert stored.status == ThreadStatus.IDLE

    stateless = services.run_create(
        owner=alice, body={"assistant_id": "echo", **echo_input("x")}, on_completion="delete"
    )
    assert tasks.run_execute(str(stateless.pk)) == RunStatus.SUCCESS
    assert not Thread.objects.filter(pk=stateless.thread_id).exists()
