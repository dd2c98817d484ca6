"""Runs whose worker died end in error and free their thread; lost messages are dispatched again."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from runs import recovery
from runs.models import Run, RunStatus, Thread
from runs.tasks import claim
from tests.conftest import Cluster, wait_for

pytestmark = pytest.mark.django_db


def start_run(api, **body) -> dict:
    thread = api.post("/threads", {}, format="json").json()
    body = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}, **body}
    run = api.post(f"/threads/{thread['thread_id']}/runs", body, format="json")
    assert run.status_code == 200, run.content
    return run.json()


def test_a_running_run_whose_worker_stopped_beating_ends_in_error_and_frees_its_thread(api):
    run = start_run(api)
    assert claim(run["run_id"])
    Run.objects.filter(pk=run["run_id"]).update(
        heartbeat_at=timezone.now() - timedelta(minutes=2), worker="deadhost:99"
    )

    assert recovery.runs_reap_stale(heartbeat_timeout=30) == 1

    row = Run.objects.get(pk=run["run_id"])
    assert row.status == RunStatus.ERROR
    assert row.error["error"] == "WorkerLost" and "deadhost:99" in row.error["message"]
    # Its streams end as a failed run's do: an error event, and run_done on the thread stream.
    events = [(e.event, e.payload, e.thread_only) for e in row.events.order_by("seq")]
    assert events == [
        ("error", row.error, False),
        ("metadata", {"status": "run_done", "run_id": run["run_id"]}, True),
    ]
    assert Thread.objects.get(pk=run["thread_id"]).status != "busy"
    second = api.post(
        f"/threads/{run['thread_id']}/runs",
        {"assistant_id": "echo", "input": {"messages": []}, "multitask_strategy": "reject"},
        format="json",
    )
    assert second.status_code == 200  # nothing active left: reject lets it in


def test_a_run_of_a_worker_seen_dead_ends_in_error_at_once(api):
    from executions.recovery import worker_jobs_reap

    lost, kept = start_run(api), start_run(api)
    for run, worker in ((lost, "host:7"), (kept, "host:8")):
        assert claim(run["run_id"])
        Run.objects.filter(pk=run["run_id"]).update(worker=worker)

    worker_jobs_reap(worker="host:7", claimed_before=timezone.now(), cause="was killed by SIGKILL")
    worker_jobs_reap(worker="host:7", claimed_before=timezone.now(), cause="was killed by SIGKILL")

    row = Run.objects.get(pk=lost["run_id"])
    assert row.status == RunStatus.ERROR
    assert row.error == {"error": "WorkerLost", "message": "The worker host:7 running this run was killed by SIGKILL."}
    assert row.events.filter(event="error").count() == 1
    assert Run.objects.get(pk=kept["run_id"]).status == RunStatus.RUNNING


def test_a_live_heartbeat_is_left_alone(api):
    run = start_run(api)
    assert claim(run["run_id"])

    assert recovery.runs_reap_stale(heartbeat_timeout=30) == 0
    assert Run.objects.get(pk=run["run_id"]).status == RunStatus.RUNNING


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_kill_9_of_the_worker_running_a_graph(api):
    # Default heartbeat settings (30 s timeout): the cluster sees its worker die and reaps at once.
    cluster = Cluster(workers=2)
    try:
        run = start_run(api, input={"messages": [{"role": "user", "content": "slow"}], "sleep": 30})
        running = wait_for(
            lambda: Run.objects.filter(pk=run["run_id"], status="running").exclude(worker="").first(),
            timeout=30, message=cluster.log,
        )
        os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        killed_at = time.monotonic()

        ended = wait_for(
            lambda: Run.objects.filter(pk=run["run_id"], status="error").first(), timeout=45, interval=0.05
        )
        assert ended.error["message"] == f"The worker {running.worker} running this run was killed by SIGKILL."
        assert time.monotonic() - killed_at < 10
        # The thread takes new runs, and a surviving worker runs them.
        follow_up = api.post(
            f"/threads/{run['thread_id']}/runs",
            {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "again"}]}},
            format="json",
        ).json()
        done = wait_for(
            lambda: Run.objects.filter(pk=follow_up["run_id"], status__in=RunStatus.terminal()).first(),
            timeout=30, message=lambda: f"{Run.objects.filter(thread_id=run['thread_id']).values()}\n{cluster.log()}",
        )
        assert done.status == RunStatus.SUCCESS, (done.error, cluster.log())
    finally:
        cluster.stop()
