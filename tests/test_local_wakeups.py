"""Local wake-ups without Redis: datagrams between processes of one machine, the event hub reading
them, and the ORM broker whose pushers they wake. Real sockets, real processes, real clusters."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone
from django_q.models import OrmQ

from executions.models import Execution, ExecutionStatus
from project.orm_broker import ORMBroker
from project.realtime import event_hub, local_wakeups
from tests.conftest import ROOT, Cluster, subprocess_env, wait_for

# With Redis, Redis wakes the hubs and is the broker: the ORM broker and the hub's sockets are unused.
needs_no_redis = pytest.mark.skipif(
    bool(django_settings.REDIS_URL), reason="local wake-ups replace Redis; with it, Redis wakes"
)


@pytest.fixture
def wakeups_dir(settings, tmp_path) -> Path:
    directory = tmp_path / "wakeups"
    settings.LOCAL_WAKEUPS_DIR = str(directory)
    return directory


def python(code: str, **env: str) -> subprocess.Popen:
    """A Django process of this project running ``code``, its output piped back."""
    return subprocess.Popen(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=ROOT,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sockets(directory: Path, kind: str = "") -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(kind)) if directory.exists() else []


# --- the datagrams ------------------------------------------------------------------------------------


def test_sending_never_fails_when_nobody_listens_or_wake_ups_are_off(wakeups_dir, settings):
    role = local_wakeups.role("test", "nobody")
    assert local_wakeups.send(role, b"x") == 0  # no directory yet
    wakeups_dir.mkdir()
    assert local_wakeups.send(role, b"x") == 0  # nobody in it

    settings.LOCAL_WAKEUPS_DIR = ""
    assert not local_wakeups.enabled()
    assert local_wakeups.Listener.open(role) is None
    assert local_wakeups.send(role, b"x") == 0


def test_a_listener_in_another_process_is_woken_at_once_and_only_for_its_role(wakeups_dir):
    role = local_wakeups.role("test", "other-process")
    child = python(
        "import sys, time\n"
        "from project.realtime import local_wakeups\n"
        f"listener = local_wakeups.Listener.open({role!r})\n"
        "print('ready', flush=True)\n"
        "got = listener.wait(20)\n"
        "print(time.monotonic(), got, flush=True)\n",
        LOCAL_WAKEUPS_DIR=str(wakeups_dir),
    )
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        assert local_wakeups.send(local_wakeups.role("test", "someone else"), b"not you") == 0
        sent_at = time.monotonic()
        assert local_wakeups.send(role, b"you") == 1
        woken_at, got = child.stdout.readline().split(" ", 1)
        assert got.strip() == "[b'you']"
        assert float(woken_at) - sent_at < 0.5  # CLOCK_MONOTONIC is the machine's, not the process's
        assert child.wait(10) == 0
    finally:
        child.kill()
        child.wait()
    # It exited normally: its socket went with it.
    assert sockets(wakeups_dir) == []


def test_a_full_queue_is_skipped_without_blocking(wakeups_dir):
    role = local_wakeups.role("test", "full")
    listener = local_wakeups.Listener.open(role)
    try:
        started = time.monotonic()
        delivered = [local_wakeups.send(role, b"x") for _ in range(10 * local_wakeups.QUEUE_LIMIT)]
        assert time.monotonic() - started < 1.0
        # The first ones queue, the rest find the queue full and are dropped: it has wake-ups.
        assert 1 <= sum(delivered) <= local_wakeups.QUEUE_LIMIT + 1 and delivered[0] == 1
        assert 1 <= len(listener.drain()) <= local_wakeups.QUEUE_LIMIT + 1
        assert local_wakeups.send(role, b"again") == 1  # drained: it takes wake-ups again
    finally:
        listener.close()
    assert sockets(wakeups_dir) == []


def test_the_socket_of_a_killed_listener_is_removed_by_the_next_sender(wakeups_dir):
    role = local_wakeups.role("test", "killed")
    child = python(
        "import time\n"
        "from project.realtime import local_wakeups\n"
        f"listener = local_wakeups.Listener.open({role!r})\n"
        "print(listener.name, flush=True)\n"
        "time.sleep(60)\n",
        LOCAL_WAKEUPS_DIR=str(wakeups_dir),
    )
    name = child.stdout.readline().strip()
    assert name, child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert sockets(wakeups_dir) == [name]  # killed outright: nothing removed it

    assert local_wakeups.send(role, b"x") == 0
    assert sockets(wakeups_dir) == []


def test_a_listener_sweeps_away_dead_sockets_of_any_role(wakeups_dir):
    child = python(
        "import os\n"
        "from project.realtime import local_wakeups\n"
        "listener = local_wakeups.Listener.open(local_wakeups.role('test', 'forgotten'))\n"
        "os._exit(0)\n",  # no cleanup at all, as after a crash
        LOCAL_WAKEUPS_DIR=str(wakeups_dir),
    )
    assert child.wait(30) == 0, child.stderr.read()
    assert len(sockets(wakeups_dir, "test-")) == 1
    local_wakeups._last_sweep.clear()  # this process may have swept within the minute already
    listener = local_wakeups.Listener.open(local_wakeups.role("test", "new"))
    try:
        assert sockets(wakeups_dir) == [listener.name]
    finally:
        listener.close()


def _child_of_a_listener(listener: local_wakeups.Listener, names: multiprocessing.Queue) -> None:
    listener.close()  # an inherited listener is not the child's to remove
    broker = ORMBroker(list_key="forked")
    names.put(broker._listener().name)


@needs_no_redis
def test_a_forked_child_neither_removes_nor_shares_its_parents_socket(wakeups_dir, db):
    broker = ORMBroker(list_key="forked")
    parent = broker._listener()
    names: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_of_a_listener, args=(parent, names))
    child.start()
    child_name = names.get(timeout=20)
    child.join(20)
    assert child.exitcode == 0
    assert child_name != parent.name  # a socket of its own, keyed by its pid
    assert sockets(wakeups_dir) == [parent.name]  # the child's went when it exited; ours stays
    assert local_wakeups.send(broker._role()) == 1 and parent.drain() == [b""]
    parent.close()


def test_a_directory_too_long_for_a_socket_address_still_works(settings, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "wakeups"
    settings.LOCAL_WAKEUPS_DIR = str(deep)
    role = local_wakeups.role("test", "deep")
    listener = local_wakeups.Listener.open(role)
    try:
        assert len(os.fsencode(str(deep / listener.name))) > 108
        assert local_wakeups.send(role, b"deep") == 1
        assert listener.wait(5) == [b"deep"]
    finally:
        listener.close()
    assert sockets(deep) == []


# --- the event hub ------------------------------------------------------------------------------------


@needs_no_redis
def test_a_stream_reader_is_woken_by_a_publish_from_another_process(wakeups_dir, settings, db):
    # Only the datagram can wake it: no probe is registered for this kind, and the poll is slow.
    settings.EVENT_HUB_POLL_INTERVAL = 60
    assert event_hub.wakeups_pushed()

    async def scenario() -> float:
        async with event_hub.watch("hubtest:local") as watcher:
            watcher.arm()
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import django, time; django.setup()\n"
                "from project.realtime.event_hub import publish\n"
                "print(time.monotonic(), flush=True)\n"
                "publish('hubtest:local')\n",
                cwd=ROOT, env=subprocess_env(LOCAL_WAKEUPS_DIR=str(wakeups_dir)),
                stdout=asyncio.subprocess.PIPE,
            )
            sent_at = float((await child.stdout.readline()).decode())
            assert await watcher.wait(20)
            woken_at = time.monotonic()
            await child.wait()
            return woken_at - sent_at

    assert async_to_sync(scenario)() < 0.5
    assert sockets(wakeups_dir) == []  # the hub's socket went with its loop


@needs_no_redis
def test_one_publish_wakes_the_readers_of_each_channel_it_names(wakeups_dir, settings, db):
    settings.EVENT_HUB_POLL_INTERVAL = 60
    many = [f"hubtest:many-{i:04}" for i in range(300)]  # longer than one datagram carries

    async def scenario() -> None:
        async with (
            event_hub.watch("hubtest:run") as run, event_hub.watch("hubtest:thread") as thread,
            event_hub.watch("hubtest:other") as other, event_hub.watch(many[-1]) as last,
        ):
            for watcher in (run, thread, other, last):
                watcher.arm()
            await sync_to_async(event_hub.publish)("hubtest:run", "hubtest:thread")
            assert await run.wait(5) and await thread.wait(5)
            assert not await other.wait(0.3)
            await sync_to_async(event_hub.publish)(*many)
            assert await last.wait(5)

    async_to_sync(scenario)()


@needs_no_redis
def test_a_hub_whose_queue_overflowed_wakes_every_reader(wakeups_dir, settings, db):
    settings.EVENT_HUB_POLL_INTERVAL = 60

    async def scenario() -> None:
        async with event_hub.watch("hubtest:busy") as busy, event_hub.watch("hubtest:quiet") as quiet:
            busy.arm()
            quiet.arm()
            role = event_hub._local_role()
            # Without yielding to the loop: the hub cannot read, its queue fills, "quiet"'s
            # wake-up is dropped with the rest.
            for _ in range(3 * local_wakeups.QUEUE_LIMIT):
                local_wakeups.send(role, b"hubtest:busy")
            local_wakeups.send(role, b"hubtest:quiet")
            assert await busy.wait(5)
            assert await quiet.wait(5)  # the overflow woke everybody

    async_to_sync(scenario)()


@needs_no_redis
def test_the_hubs_socket_lives_while_somebody_watches(wakeups_dir, settings, db):
    settings.EVENT_HUB_POLL_INTERVAL = 0.05

    async def scenario() -> None:
        current = event_hub.hub()
        async with event_hub.watch("hubtest:lifetime"):
            assert len(sockets(wakeups_dir, "hub-")) == 1
        deadline = time.monotonic() + 5
        while current.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not current.running
        await asyncio.sleep(0)  # the task's done-callbacks
        assert sockets(wakeups_dir) == []

    async_to_sync(scenario)()


# --- the broker ------------------------------------------------------------------------------------------


@needs_no_redis
@pytest.mark.django_db(transaction=True)
def test_brokers_sharing_the_queue_lease_each_task_once(wakeups_dir):
    ids = {ORMBroker(list_key="shared").enqueue(f"task {i}") for i in range(60)}
    assert len(ids) == 60 and set(OrmQ.objects.values_list("pk", flat=True)) == ids
    leased: list[list[tuple[int, str]]] = [[], []]

    def pusher(index: int) -> None:
        broker = ORMBroker(list_key="shared")
        try:
            while True:
                tasks = broker.dequeue()
                if tasks:
                    leased[index].extend(tasks)
                elif not OrmQ.objects.filter(lock__lt=timezone.now()).exists():
                    return
        finally:
            connections.close_all()

    threads = [threading.Thread(target=pusher, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    first, second = ({task_id for task_id, _ in batch} for batch in leased)
    assert first | second == ids and not first & second
    assert len(leased[0]) + len(leased[1]) == 60  # nobody got a task twice either
    assert {payload for batch in leased for _, payload in batch} == {f"task {i}" for i in range(60)}

    broker = ORMBroker(list_key="shared")
    assert broker.dequeue() is None  # every task is leased
    expired = min(ids)
    OrmQ.objects.filter(pk=expired).update(lock=timezone.now() - timedelta(seconds=1))
    assert broker.dequeue() == [(expired, "task 0")]  # its lease ran out: queued again
    for task_id in ids:
        broker.acknowledge(task_id)
    assert not OrmQ.objects.exists()


# --- live: a cluster and a server whose polls are all slow ----------------------------------------------

SLOW_POLLS = {"Q_POLL": "5", "EVENT_HUB_POLL_INTERVAL": "5", "RUNS_WAIT_POLL_INTERVAL": "5"}


def wait_for_pusher(directory: Path, cluster: Cluster) -> None:
    # It binds its socket on its first dequeue; from then on it waits on it, 5 s at a time.
    wait_for(lambda: sockets(directory, "pusher-"), timeout=30, message=cluster.log())


@needs_no_redis
@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_cluster_polling_every_5_s_picks_up_new_executions_at_once(wakeups_dir, api):
    cluster = Cluster(workers=1, LOCAL_WAKEUPS_DIR=str(wakeups_dir), **SLOW_POLLS)
    try:
        wait_for_pusher(wakeups_dir, cluster)
        pickups = []
        for index in range(3):
            # Each one is created while the pusher is in the 5 s wait that follows the last one.
            response = api.post(
                "/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {"n": index}},
                format="json",
            )
            assert response.status_code == 201, response.content
            execution_id = response.json()["execution_id"]
            wait_for(
                lambda pk=execution_id: Execution.objects.filter(pk=pk, status=ExecutionStatus.COMPLETED).exists(),
                timeout=15, message=cluster.log(),
            )
            execution = Execution.objects.get(pk=execution_id)
            pickups.append((execution.started_at - execution.created_at).total_seconds())
        assert max(pickups) < 1.0, pickups
    finally:
        cluster.stop()
    assert sockets(wakeups_dir, "pusher-") == []  # the pusher removed its socket when it stopped


@needs_no_redis
@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_runs_wait_is_answered_at_once_though_every_poll_is_5_s(wakeups_dir, make_user):
    from accounts.models import api_key_create
    from runs.models import Run
    from tests.runs.conftest import GRAPHS_CONFIG, Server

    _, api_key = api_key_create(user=make_user("waiter"))
    env = {"LOCAL_WAKEUPS_DIR": str(wakeups_dir), "LANGGRAPH_CONFIG": str(GRAPHS_CONFIG), **SLOW_POLLS}
    server = Server(**env)
    cluster = Cluster(workers=1, **env)
    try:
        wait_for_pusher(wakeups_dir, cluster)
        with httpx.Client(base_url=server.url, headers={"x-api-key": api_key}, timeout=30) as client:
            thread_id = client.post("/threads", json={}).json()["thread_id"]

            def wait(text: str) -> float:
                started = time.monotonic()
                response = client.post(
                    f"/threads/{thread_id}/runs/wait",
                    json={"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": text}]}},
                )
                elapsed = time.monotonic() - started
                assert response.status_code == 200, response.text
                assert response.json()["messages"][-1]["content"] == f"echo: {text}"
                return elapsed

            wait("warm-up")  # the worker imports and compiles the graph on its first run
            elapsed = [wait(f"run {index}") for index in range(3)]
        runs = Run.objects.filter(thread_id=thread_id).order_by("created_at")
        pickups = [(run.started_at - run.created_at).total_seconds() for run in runs][1:]
        # Without wake-ups each would take seconds: the pusher, the hub and /wait all poll every 5 s.
        assert max(elapsed) < 1.0, (elapsed, pickups, cluster.log()[-3000:], server.log()[-3000:])
        assert max(pickups) < 1.0, pickups
    finally:
        cluster.stop()
        server.stop()
