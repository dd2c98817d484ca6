"""A worker frozen (SIGSTOP) past the heartbeat timeout, then woken (SIGCONT) while another worker
runs its job: fencing (issue 11).

Recovery requeues the frozen worker's execution and the other worker claims it. When the frozen
one wakes up in the middle of its target, every write it tries (heartbeat, progress, log,
finish) names its own claim and changes nothing; it stops its target as ``superseded`` and
records nothing. Before fencing, the woken worker kept writing progress to the row the new one
owned (the step flipped between the two), completed it with its own outputs, and the new worker
stopped with a ``cancelled`` nobody gave.

A graph run is not run again (recovery ends it ``error``, WorkerLost), but its thread is: the
thread's next run, on the other worker, must not see the woken worker's checkpoints, events or
end land in the middle of it.

Heartbeat every 0.5 s, lost after 2 s without one, sweeps every 0.5 s. Runs on either backend:
SQLite with the ORM broker (the default) and PostgreSQL + Redis.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from checkpoints.models import Checkpoint
from executions.models import Execution, ExecutionStatus
from executions.registry import agent, registry
from runs.models import Run, RunStatus, Thread
from tests.conftest import Cluster, wait_for
from tests.faults.conftest import figure, process_alive, wait_for_log, worker_pid
from tests.faults.frozen import PID_STEPS, pid_steps

pytestmark = [pytest.mark.slow, pytest.mark.live, pytest.mark.django_db(transaction=True)]

HEARTBEAT_TIMEOUT = 2.0
CLUSTER_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.faults.settings",  # adds the pid-naming agent in the workers
    "EXECUTIONS_HEARTBEAT_INTERVAL": "0.5",
    "EXECUTIONS_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
    "RUNS_HEARTBEAT_INTERVAL": "0.5",
    "RUNS_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
    "EXECUTIONS_SWEEP_INTERVAL": "0.5",
    "LOG_LEVEL": "INFO",
}
STEPS, STEP_SECONDS = 16, 0.5
GRAPHS_CONFIG = Path(__file__).parent / "langgraph.json"  # serves tests.faults.frozen_graph


@pytest.fixture
def pid_steps_registered() -> Iterator[None]:
    agent(PID_STEPS)(pid_steps)
    try:
        yield
    finally:
        registry.unregister("agent", PID_STEPS)


def backend() -> str:
    return f"{connection.vendor} + {'Redis' if settings.REDIS_URL else 'the ORM broker'}"


def step_pid(step_name: str) -> int | None:
    """The pid a ``pid_steps`` progress names (``"<pid> step <n>"``)."""
    head = step_name.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def test_a_frozen_worker_woken_after_its_execution_was_reclaimed_writes_nothing(
    api, pid_steps_registered
) -> None:
    cluster = Cluster(workers=2, **CLUSTER_ENV)
    frozen_pid = None
    try:
        wait_for_log(cluster.log, "ready for work", 2)
        response = api.post(
            "/api/v1/executions",
            {"type": "agent", "target_id": PID_STEPS, "inputs": {"steps": STEPS, "step_seconds": STEP_SECONDS}},
            format="json",
        )
        assert response.status_code == 201, response.content
        execution_id = response.json()["execution_id"]
        first = wait_for(
            lambda: Execution.objects.filter(pk=execution_id, status="running", current_step__gte=2).first(),
            timeout=30, message=cluster.log(),
        )
        frozen_pid = worker_pid(first.worker)

        os.kill(frozen_pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        reclaimed = wait_for(
            lambda: Execution.objects.filter(pk=execution_id, status="running", attempts=2)
            .exclude(worker="").first(),
            timeout=30, interval=0.05, message=f"the frozen worker's job to be claimed again\n{cluster.log()}",
        )
        reclaimed_after = time.monotonic() - frozen_at
        new_pid = worker_pid(reclaimed.worker)
        assert new_pid != frozen_pid
        # Let the new worker make progress of its own, then wake the frozen one in its step.
        wait_for(
            lambda: step_pid(Execution.objects.get(pk=execution_id).step_name) == new_pid,
            timeout=10, message="the new worker's first progress",
        )
        os.kill(frozen_pid, signal.SIGCONT)
        frozen_for = time.monotonic() - frozen_at

        # Watch the row until the job ends: its step must only ever name the new worker now.
        samples = flips = 0
        last_pid = new_pid
        deadline = time.monotonic() + STEPS * STEP_SECONDS + 30
        while True:
            row = Execution.objects.filter(pk=execution_id).values("status", "step_name").get()
            samples += 1
            pid = step_pid(row["step_name"])
            if pid is not None and pid != last_pid:
                flips += 1
                last_pid = pid
            if row["status"] in ExecutionStatus.terminal():
                break
            assert time.monotonic() < deadline, cluster.log()[-4000:]
            time.sleep(0.02)
        wait_for_log(cluster.log, "was superseded", 1, timeout=10)

        execution = Execution.objects.get(pk=execution_id)
        assert flips == 0, f"the step flipped {flips} times between the two workers"
        assert execution.status == ExecutionStatus.COMPLETED, execution.error
        assert execution.outputs == {"pid": new_pid, "steps": STEPS}
        assert execution.attempts == 2 and worker_pid(execution.worker) == new_pid

        events = list(execution.events.order_by("seq"))
        requeue = next(e for e in events if e.data.get("reason") == "worker_lost")
        assert requeue.data["attempt"] == 1 and worker_pid(requeue.data["worker"]) == frozen_pid
        after = [e for e in events if e.seq > requeue.seq]
        writers = {step_pid(e.data["step_name"]) for e in after if e.type == "progress"}
        writers |= {e.data["pid"] for e in after if e.type == "log"}
        assert writers == {new_pid}, writers
        statuses = [e.data["status"] for e in events if e.type == "status"]
        assert statuses == ["running", "pending", "running", "completed"], statuses
        assert not [e for e in events if e.type == "worker_stopped"]
        assert sum(1 for e in after if e.type == "progress") == STEPS
        stale_writes = sum(1 for e in after if e.type in ("progress", "log") and (
            step_pid(e.data.get("step_name", "")) == frozen_pid or e.data.get("pid") == frozen_pid))

        # The woken worker is whole again: it takes the next jobs like any other.
        assert process_alive(frozen_pid)
        ids = [
            api.post("/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {"n": n}},
                     format="json").json()["execution_id"]
            for n in range(6)
        ]
        wait_for(lambda: Execution.objects.filter(pk__in=ids, status="completed").count() == len(ids),
                 timeout=30, message=cluster.log()[-3000:])

        figure(
            f"frozen worker, an execution on {backend()} (SIGSTOP for {frozen_for:.1f}s, heartbeat "
            f"timeout {HEARTBEAT_TIMEOUT:g}s): re-claimed by another "
            f"worker {reclaimed_after:.1f}s after the freeze; after SIGCONT {stale_writes} writes of the "
            f"stale worker landed, the step flipped {flips} times in {samples} samples, one terminal "
            f"state (completed, outputs of attempt 2), no cancelled, no worker_stopped"
        )
    finally:
        if frozen_pid is not None and process_alive(frozen_pid):
            os.kill(frozen_pid, signal.SIGCONT)  # a stopped worker would hold up the cluster's stop
        cluster.stop()


def log_pids(log: list[str]) -> list[int]:
    return [int(line.split(" ", 1)[0]) for line in log]


def test_a_frozen_worker_woken_after_its_graph_run_was_reaped_writes_nothing(api, monkeypatch) -> None:
    monkeypatch.setenv("LANGGRAPH_CONFIG", str(GRAPHS_CONFIG))  # the API of this process, too
    cluster = Cluster(workers=2, LANGGRAPH_CONFIG=str(GRAPHS_CONFIG), **CLUSTER_ENV)
    frozen_pid = None
    try:
        wait_for_log(cluster.log, "ready for work", 2)
        thread_id = api.post("/threads", {}, format="json").json()["thread_id"]

        def start_run(steps: int) -> str:
            response = api.post(
                f"/threads/{thread_id}/runs",
                {"assistant_id": "faults_pid_steps",
                 "input": {"steps": steps, "step_seconds": STEP_SECONDS, "done": 0}},
                format="json",
            )
            assert response.status_code == 200, response.content
            return response.json()["run_id"]

        first_id = start_run(STEPS)
        first = wait_for(
            lambda: Run.objects.filter(pk=first_id, status="running").first()
            if Checkpoint.objects.filter(run_id=first_id).count() >= 3 else None,
            timeout=30, message=cluster.log(),
        )
        frozen_pid = worker_pid(first.worker)

        os.kill(frozen_pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        reaped = wait_for(
            lambda: Run.objects.filter(pk=first_id).exclude(status="running").first(),
            timeout=30, interval=0.05, message=f"the frozen worker's run to be reaped\n{cluster.log()}",
        )
        reaped_after = time.monotonic() - frozen_at
        assert reaped.status == RunStatus.ERROR and reaped.error["error"] == "WorkerLost", reaped.error
        # What the frozen worker's run left: nothing of it may change from now on.
        checkpoints_at_reap = Checkpoint.objects.filter(run_id=first_id).count()
        events_at_reap = list(reaped.events.order_by("seq").values_list("seq", "event"))
        assert events_at_reap[-1][1] == "metadata"  # the thread stream's run_done

        # The thread takes its next run on the other worker; the frozen one wakes in its middle.
        second_id = start_run(6)
        second = wait_for(
            lambda: Run.objects.filter(pk=second_id, status="running").first()
            if Checkpoint.objects.filter(run_id=second_id).count() >= 2 else None,
            timeout=30, message=cluster.log(),
        )
        new_pid = worker_pid(second.worker)
        assert new_pid != frozen_pid
        # Until the second run ends, nothing writes the thread's row (its end does, with the run's
        # in one transaction): a change seen while the run is still active is the woken worker's.
        thread_row = Thread.objects.filter(pk=thread_id).values("status", "values", "updated_at")
        thread_before = thread_row.get()
        os.kill(frozen_pid, signal.SIGCONT)
        frozen_for = time.monotonic() - frozen_at

        thread_writes = samples = 0
        deadline = time.monotonic() + 30
        while True:
            seen = thread_row.get()
            status = Run.objects.filter(pk=second_id).values_list("status", flat=True).get()
            samples += 1
            if status not in RunStatus.active():
                break
            if seen != thread_before:
                thread_writes += 1
                thread_before = seen
            assert time.monotonic() < deadline, cluster.log()[-4000:]
            time.sleep(0.02)
        done = Run.objects.get(pk=second_id)
        wait_for_log(cluster.log, "was superseded", 1, timeout=10)
        time.sleep(1.0)  # anything the woken worker still had to write would land by now

        assert done.status == RunStatus.SUCCESS, done.error
        first = Run.objects.get(pk=first_id)
        assert (first.status, first.error["error"]) == (RunStatus.ERROR, "WorkerLost")
        stale_checkpoints = Checkpoint.objects.filter(run_id=first_id).count() - checkpoints_at_reap
        stale_events = list(first.events.order_by("seq").values_list("seq", "event"))[len(events_at_reap):]
        assert stale_checkpoints == 0 and stale_events == []
        assert thread_writes == 0, f"the thread's row changed {thread_writes} times during the next run"
        # The thread's state: the first run's steps up to the freeze, then the second run's, all
        # written by the worker that held the run at the time.
        state = api.get(f"/threads/{thread_id}/state").json()
        pids = log_pids(state["values"]["log"])
        first_steps = pids[: len(pids) - 6]
        assert set(first_steps) == {frozen_pid} and pids[len(first_steps):] == [new_pid] * 6, pids
        assert Thread.objects.get(pk=thread_id).status == "idle"
        statuses = {run["run_id"]: run["status"] for run in api.get(f"/threads/{thread_id}/runs").json()}
        assert statuses == {first_id: "error", second_id: "success"}

        figure(
            f"frozen worker, a graph run on {backend()} (SIGSTOP for {frozen_for:.1f}s, heartbeat "
            f"timeout {HEARTBEAT_TIMEOUT:g}s): reaped (error, WorkerLost) {reaped_after:.1f}s after the "
            f"freeze; after SIGCONT, during the thread's next run on another worker, {stale_checkpoints} "
            f"checkpoints, {len(stale_events)} events and {thread_writes} thread updates (in {samples} "
            f"samples) of the stale worker landed; the next run "
            f"succeeded with its own {len(pids) - len(first_steps)} steps, nobody interrupted"
        )
    finally:
        if frozen_pid is not None and process_alive(frozen_pid):
            os.kill(frozen_pid, signal.SIGCONT)
        cluster.stop()
