"""Worker processes with graph runs in flight that die (kill -9) or are stopped (SIGTERM, a
deploy): every run ends once, or finishes within the grace, or goes back to the queue at once and
runs again. A file of its own: each test starts its own cluster, which must be the only one
reading the queue (``test_concurrency_live``'s module cluster would take runs too)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from langgraph_sdk import get_sync_client

from runs.models import Run, RunEvent, RunStatus
from tests.conftest import Cluster, figure, wait_for
from tests.runs.conftest import LiveStack, Server
from tests.runs.test_concurrency_live import GRAPHS, nap, start_runs

pytestmark = [pytest.mark.slow, pytest.mark.live, pytest.mark.django_db(transaction=True)]


def runs_by_label(inputs: dict[str, dict], runs: dict[str, dict]) -> dict[str, Run]:
    return {label: Run.objects.get(pk=runs[label]["run_id"]) for label in inputs}


def test_kill_9_of_a_worker_with_ten_runs_in_flight_ends_each_once(transactional_db, make_user) -> None:
    from accounts.models import api_key_create

    server = Server(LANGGRAPH_CONFIG=str(GRAPHS))
    cluster = Cluster(workers=1, LANGGRAPH_CONFIG=str(GRAPHS), RUNS_CONCURRENCY_PER_WORKER="10")
    try:
        live = LiveStack(server.url, api_key_create(user=make_user("k"))[1], "", server, cluster)
        inputs = {f"long-{n}": nap(f"long-{n}", seconds=60) for n in range(10)}
        runs = asyncio.run(start_runs(live, inputs))
        ids = [run["run_id"] for run in runs.values()]
        wait_for(lambda: Run.objects.filter(pk__in=ids, status=RunStatus.RUNNING).count() == 10, timeout=30,
                 message=lambda: cluster.log()[-3000:])
        workers = set(Run.objects.filter(pk__in=ids).values_list("worker", flat=True))
        assert len(workers) == 1
        killed_at = time.monotonic()
        os.kill(int(workers.pop().rsplit(":", 1)[1]), signal.SIGKILL)
        wait_for(lambda: not Run.objects.filter(pk__in=ids, status=RunStatus.RUNNING).exists(), timeout=20,
                 message=lambda: cluster.log()[-3000:])
        recovered_in = time.monotonic() - killed_at
        for run in Run.objects.filter(pk__in=ids):
            assert run.status == RunStatus.ERROR and run.error["error"] == "WorkerLost"
            assert RunEvent.objects.filter(run_id=run.pk, event="metadata", data__contains="run_done").count() == 1
        # Their threads take new runs, on the worker that replaced the dead one.
        client = get_sync_client(url=live.url, api_key=live.api_key)
        again = client.runs.wait(runs["long-0"]["thread_id"], "naps", input=nap("again", seconds=0))
        assert again["log"] == ["again done"]
        figure(f"kill -9 of a worker with 10 runs in flight: all 10 ended once (WorkerLost) {recovered_in:.1f} s after")
    finally:
        cluster.stop()
        server.stop()


def test_sigterm_lets_short_runs_finish_and_releases_long_ones_at_once_to_run_again(
    transactional_db, make_user
) -> None:
    from accounts.models import api_key_create
    from checkpoints.models import Checkpoint

    grace = 4
    server = Server(LANGGRAPH_CONFIG=str(GRAPHS))
    env = {"LANGGRAPH_CONFIG": str(GRAPHS), "WORKER_GRACE_SECONDS": str(grace)}
    cluster = Cluster(workers=1, **env)
    second: Cluster | None = None
    try:
        live = LiveStack(server.url, api_key_create(user=make_user("t"))[1], "", server, cluster)
        inputs = {
            **{f"short-{n}": nap(f"short-{n}", seconds=2) for n in range(4)},
            **{f"long-{n}": nap(f"long-{n}", seconds=12) for n in range(4)},
        }
        runs = asyncio.run(start_runs(live, inputs))
        ids = [run["run_id"] for run in runs.values()]
        wait_for(lambda: Run.objects.filter(pk__in=ids, status=RunStatus.RUNNING).count() == 8, timeout=30,
                 message=lambda: cluster.log()[-3000:])
        stopped_at = time.monotonic()
        cluster.process.send_signal(signal.SIGTERM)  # a deploy: SIGTERM to the cluster's main process
        try:
            cluster.process.wait(timeout=grace + 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the cluster did not stop:\n{cluster.log()[-5000:]}")
        stop_took = time.monotonic() - stopped_at
        rows = runs_by_label(inputs, runs)
        assert all(run.status != RunStatus.RUNNING for run in rows.values()), cluster.log()[-5000:]
        for label, run in rows.items():
            if label.startswith("short"):
                assert run.status == RunStatus.SUCCESS and run.result["log"] == [f"{label} done"]
            else:  # released at the end of the grace, with what its attempt wrote
                assert run.status == RunStatus.PENDING and run.attempts == 1, (run.status, run.error)
                assert not Checkpoint.objects.filter(run_id=str(run.pk)).exists()
        assert stop_took < grace + 8

        second = Cluster(workers=1, **env)
        longs = [rows[label].pk for label in inputs if label.startswith("long")]
        wait_for(lambda: Run.objects.filter(pk__in=longs, status=RunStatus.SUCCESS).count() == 4, timeout=60,
                 message=lambda: (second.log() if second else "")[-3000:])
        client = get_sync_client(url=live.url, api_key=live.api_key)
        for label in inputs:
            if label.startswith("long"):
                run = Run.objects.get(pk=runs[label]["run_id"])
                assert run.attempts == 2
                # Re-run from the thread's state before the released attempt: its input applied once.
                assert client.threads.get_state(runs[label]["thread_id"])["values"]["log"] == [f"{label} done"]
        figure(f"SIGTERM with 4 short (2 s) and 4 long runs in flight, grace {grace} s: cluster gone after "
               f"{stop_took:.1f} s, short ones done, long ones released and run again by the next cluster")
    finally:
        cluster.stop()
        if second is not None:
            second.stop()
        server.stop()


def test_sigterm_gives_async_executions_left_after_the_grace_back_without_using_an_attempt(api) -> None:
    from executions.models import Execution, ExecutionStatus

    grace = 3
    cluster = Cluster(workers=1, WORKER_GRACE_SECONDS=str(grace))
    second: Cluster | None = None
    try:
        def create(seconds: float) -> str:
            body = {"type": "agent", "target_id": "wait", "inputs": {"seconds": seconds}}
            return api.post("/api/v1/executions", body, format="json").json()["execution_id"]

        short, long = [create(1) for _ in range(3)], [create(15) for _ in range(3)]
        wait_for(lambda: Execution.objects.filter(pk__in=short + long, status=ExecutionStatus.RUNNING).count() == 6,
                 timeout=30, message=lambda: cluster.log()[-3000:])
        cluster.process.send_signal(signal.SIGTERM)
        cluster.process.wait(timeout=grace + 15)
        assert Execution.objects.filter(pk__in=short, status=ExecutionStatus.COMPLETED).count() == 3
        for execution in Execution.objects.filter(pk__in=long):
            assert (execution.status, execution.attempts) == (ExecutionStatus.PENDING, 0)
            assert execution.events.filter(type="status", data__reason="released").exists()
        second = Cluster(workers=1)
        wait_for(lambda: Execution.objects.filter(pk__in=long, status=ExecutionStatus.COMPLETED).count() == 3,
                 timeout=60, message=lambda: (second.log() if second else "")[-3000:])
        assert set(Execution.objects.filter(pk__in=long).values_list("attempts", flat=True)) == {1}
    finally:
        cluster.stop()
        if second is not None:
            second.stop()
