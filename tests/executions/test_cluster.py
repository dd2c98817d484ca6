"""The qcluster of ``executions.cluster``, as real processes: workers that share no lock.

The slow, repeated versions (20 idle kills, 10 busy kills, on PostgreSQL + Redis) are in
``tests/faults/test_single_worker_kill.py``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from django_q.models import Task
from django_q.tasks import async_task

from executions.models import Execution, ExecutionStatus
from tests.conftest import Cluster, wait_for
from tests.faults.conftest import process_alive

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def live_workers(cluster: Cluster) -> list[int]:
    pids = {int(pid) for pid in re.findall(r"ready for work at (\d+)", cluster.log())}
    return sorted(pid for pid in pids if process_alive(pid))


def run_echoes(api, count: int, *, timeout: float) -> None:
    ids = []
    for index in range(count):
        response = api.post("/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {"n": index}},
                            format="json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["execution_id"])
    wait_for(lambda: Execution.objects.filter(pk__in=ids, status=ExecutionStatus.COMPLETED).count() == count,
             timeout=timeout, message=f"{count} echo executions to complete")


def test_a_killed_idle_worker_is_replaced_and_the_others_go_on_working(api):
    cluster = Cluster(workers=2, LOG_LEVEL="INFO")
    try:
        wait_for(lambda: len(live_workers(cluster)) == 2, timeout=30, message=cluster.log())
        run_echoes(api, 2, timeout=30)
        for victim in live_workers(cluster):  # each of them once, whichever was reading the queue
            time.sleep(0.2)
            os.kill(victim, signal.SIGKILL)
            started = time.monotonic()
            run_echoes(api, 5, timeout=20)
            # A few seconds at most, however loaded the machine (a stalled cluster never gets there).
            assert time.monotonic() - started < 10, cluster.log()[-3000:]
            wait_for(lambda victim=victim: len(live_workers(cluster)) == 2 and victim not in live_workers(cluster),
                     timeout=10, message=cluster.log())
        # The sentinel logs a replacement after starting it, so its line may trail the new worker's.
        wait_for(lambda: cluster.log().count("reincarnated worker") == 2, timeout=10,
                 message=lambda: cluster.log()[-3000:])
        # SIGTERM still stops the whole cluster.
        cluster.process.send_signal(signal.SIGTERM)
        cluster.process.wait(timeout=20)
        wait_for(lambda: not live_workers(cluster), timeout=10)
    finally:
        cluster.stop()


def test_a_worker_wedged_in_its_read_of_the_broker_is_replaced(api):
    cluster = Cluster(workers=2, LOG_LEVEL="INFO", EXECUTIONS_WORKER_STALL_TIMEOUT="3")
    try:
        wait_for(lambda: len(live_workers(cluster)) == 2, timeout=30, message=cluster.log())
        wedged = live_workers(cluster)[0]
        os.kill(wedged, signal.SIGSTOP)  # as a read that never returns: its process makes no progress
        stopped_at = time.monotonic()
        wait_for(lambda: not process_alive(wedged), timeout=15, message=cluster.log())
        # 3 s after its read began, which was up to a poll (1 s at most) before it was stopped.
        assert 2 <= time.monotonic() - stopped_at < 8
        assert "has not come back from its read of the broker" in cluster.log()
        wait_for(lambda: len(live_workers(cluster)) == 2, timeout=10, message=cluster.log())
        run_echoes(api, 4, timeout=20)

        # A task without a timeout leaves django-q2's timer at "idle" while it runs: it is busy,
        # not wedged, however long it takes.
        task_id = async_task("time.sleep", 5, timeout=-1, save=True)
        wait_for(lambda: Task.objects.filter(id=task_id, success=True).exists(), timeout=30, message=cluster.log())
        assert cluster.log().count("has not come back from its read of the broker") == 1
    finally:
        cluster.stop()


def test_workers_whose_sentinel_was_killed_stop_taking_jobs(api):
    cluster = Cluster(workers=2, LOG_LEVEL="INFO")
    try:
        wait_for(lambda: len(live_workers(cluster)) == 2, timeout=30, message=cluster.log())
        main = cluster.process.pid
        (sentinel,) = (int(pid) for pid in Path(f"/proc/{main}/task/{main}/children").read_text().split())
        os.kill(sentinel, signal.SIGKILL)
        # No one would replace them or enforce their timeouts: they leave rather than go on alone.
        wait_for(lambda: not live_workers(cluster), timeout=10, message=cluster.log())
        response = api.post("/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {}}, format="json")
        time.sleep(1.5)
        assert Execution.objects.get(pk=response.json()["execution_id"]).status == ExecutionStatus.PENDING
    finally:
        cluster.stop()
