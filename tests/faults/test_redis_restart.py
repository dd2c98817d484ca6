"""Redis restarted without persistence while 200 jobs are queued: all 200 still reach a terminal state.

No worker runs while the jobs are created, so all 200 messages sit in the Redis list; then Redis
is shut down with ``SHUTDOWN NOSAVE`` and started again (the machine's Redis keeps nothing on
disk), which loses every message. Only the rows remain: the recovery sweep of the cluster started
afterwards must find the pending rows and enqueue them again, the second run of each thread after
the first. Stranded rows are re-enqueued after 10 s here (EXECUTIONS_REQUEUE_AFTER, default 30 s),
sweeps every 2 s (default 5 s).
"""

from __future__ import annotations

import time

import pytest
import redis

from executions.models import Execution, ExecutionStatus
from executions.queueing import broker_queue_size
from runs.models import Run, RunStatus
from tests.conftest import Cluster
from tests.faults.conftest import (
    figure,
    needs_postgres_and_redis,
    redis_restart_without_persistence,
    wait_for_log,
)

pytestmark = [pytest.mark.slow, pytest.mark.live, needs_postgres_and_redis, pytest.mark.django_db(transaction=True)]

EXECUTIONS_URL = "/api/v1/executions"
REQUEUE_AFTER = 10
EXECUTION_BODIES = [
    {"type": "agent", "target_id": "echo", "inputs": {"n": 1}},
    {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 0.2}},
    {"type": "pipeline", "target_id": "countdown", "inputs": {"steps": 2, "step_seconds": 0.1}},
]


def queue_size() -> int:
    # The test process's own Redis connection died with the server: the first call may fail.
    for _ in range(3):
        try:
            return broker_queue_size()
        except redis.ConnectionError:
            time.sleep(0.2)
    return broker_queue_size()


def test_redis_restarted_without_persistence_while_200_jobs_are_queued(api, restartable_redis) -> None:
    queued_before = queue_size()  # messages an earlier test left for nobody, if any
    execution_ids = []
    for index in range(150):
        response = api.post(EXECUTIONS_URL, EXECUTION_BODIES[index % 3], format="json")
        assert response.status_code == 201, response.content
        execution_ids.append(response.json()["execution_id"])
    run_ids = []
    for index in range(25):
        thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
        for turn in range(2):
            body = {
                "assistant_id": "echo",
                "input": {
                    "messages": [{"role": "user", "content": f"{index}.{turn}"}],
                    "sleep": 0.1,
                },
            }
            response = api.post(f"/threads/{thread_id}/runs", body, format="json")
            assert response.status_code == 200, response.content
            run_ids.append(response.json()["run_id"])
    assert queue_size() - queued_before == 200

    downtime = redis_restart_without_persistence()
    restarted_at = time.monotonic()
    assert queue_size() == 0  # every message is gone; the 200 rows are all pending
    assert Execution.objects.filter(pk__in=execution_ids, status="pending").count() == 150
    assert Run.objects.filter(pk__in=run_ids, status="pending").count() == 50

    cluster = Cluster(
        workers=4,
        EXECUTIONS_REQUEUE_AFTER=str(REQUEUE_AFTER),
        EXECUTIONS_SWEEP_INTERVAL="2",
        LOG_LEVEL="INFO",
    )
    try:
        wait_for_log(cluster.log, "ready for work", 4)
        deadline = time.monotonic() + 90
        first_done = None
        while True:
            executions_left = Execution.objects.filter(
                pk__in=execution_ids, status__in=ExecutionStatus.active()
            ).count()
            runs_left = Run.objects.filter(pk__in=run_ids, status__in=RunStatus.active()).count()
            if first_done is None and executions_left + runs_left < 200:
                first_done = time.monotonic() - restarted_at
            if executions_left + runs_left == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{executions_left} executions and {runs_left} runs still active\n{cluster.log()[-4000:]}"
                )
            time.sleep(0.2)
        all_done = time.monotonic() - restarted_at
    finally:
        cluster.stop()

    executions = Execution.objects.filter(pk__in=execution_ids)
    assert {e.status for e in executions} == {ExecutionStatus.COMPLETED}
    # Each ran once: the re-enqueued message was the only one, and claims are conditional.
    assert {e.attempts for e in executions} == {1}
    # Every message was lost, so only the sweep's requeues could start them; a requeued message
    # is a wake-up that claims the first claimable row (priority, then age), so a row may run on
    # the message requeued for another before the sweep reaches its own.
    assert executions.filter(requeued_at__isnull=False).exists()
    runs = Run.objects.filter(pk__in=run_ids)
    assert {r.status for r in runs} == {RunStatus.SUCCESS}
    assert {r.attempts for r in runs} == {1}
    for execution_id in execution_ids[:3]:
        assert api.get(f"{EXECUTIONS_URL}/{execution_id}").json()["status"] == "completed"

    figure(
        f"Redis SHUTDOWN NOSAVE + restart with 200 jobs queued (150 executions, 50 runs on 25 threads): "
        f"Redis down {downtime:.1f}s, 200 messages lost; with requeue-after {REQUEUE_AFTER}s the first job "
        f"ended {first_done:.1f}s and all 200 completed {all_done:.1f}s after the restart (cluster of 4 "
        f"started at once), each run exactly once"
    )
