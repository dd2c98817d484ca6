"""``async def`` agents and pipelines: run in-process (no worker loop), and many at once in one
real worker process (``EXECUTIONS_CONCURRENCY_PER_WORKER``) where a cancel stops one alone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from executions import runtime
from executions.models import Execution, ExecutionStatus
from tests.conftest import Cluster, figure, wait_for

URL = "/api/v1/executions"


def create(api, target: str, **inputs) -> str:
    response = api.post(URL, {"type": "agent", "target_id": target, "inputs": inputs}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["execution_id"]


@pytest.mark.django_db(transaction=True)
def test_an_async_agent_runs_to_completion_in_process_with_its_progress(api) -> None:
    execution_id = create(api, "wait", seconds=0.3)
    assert runtime.execute(execution_id) == "completed"
    body = api.get(f"{URL}/{execution_id}").json()
    assert body["status"] == "completed" and body["outputs"] == {"waited": 0.3}
    assert Execution.objects.get(pk=execution_id).events.filter(type="progress").exists()


@pytest.fixture
def one_worker(transactional_db) -> Iterator[Cluster]:
    cluster = Cluster(workers=1, EXECUTIONS_CONCURRENCY_PER_WORKER="25", LOG_LEVEL="INFO")
    try:
        wait_for(lambda: "ready for work" in cluster.log(), timeout=60, message=cluster.log)
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.live
def test_twenty_async_executions_overlap_on_one_worker_and_a_cancel_stops_one_alone(api, one_worker) -> None:
    started = time.monotonic()
    waiting = [create(api, "wait", seconds=2) for _ in range(20)]
    cancelled = create(api, "wait", seconds=60)
    wait_for(lambda: Execution.objects.get(pk=cancelled).status == ExecutionStatus.RUNNING, timeout=30,
             message=lambda: one_worker.log()[-3000:])
    requested = time.monotonic()
    assert api.post(f"{URL}/{cancelled}/cancel").status_code == 200
    execution = Execution.objects.get(pk=cancelled)
    stop = wait_for(lambda: execution.events.filter(type="worker_stopped").first(), timeout=5)
    cancel_took = time.monotonic() - requested
    wait_for(lambda: Execution.objects.filter(pk__in=waiting, status=ExecutionStatus.COMPLETED).count() == 20,
             timeout=30, message=lambda: one_worker.log()[-3000:])
    all_done = time.monotonic() - started
    rows = list(Execution.objects.filter(pk__in=waiting))
    assert len({row.worker for row in rows}) == 1  # one process ran them all, at once
    assert max(row.started_at for row in rows) < min(row.completed_at for row in rows)
    assert all(row.outputs == {"waited": 2.0} for row in rows)
    assert stop.data["reason"] == "cancelled" and cancel_took < 2.0
    figure(f"20 async executions awaiting 2 s on 1 worker process: all done {all_done:.1f} s after the "
           f"first create; a cancel of another stopped it in {cancel_took:.2f} s")
