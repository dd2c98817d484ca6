"""Workers survive losing their database connections mid-job (what a PostgreSQL restart does to them).

Instead of restarting the shared server, every other session of this test's database is ended
with ``pg_terminate_backend`` while a worker runs an execution and another runs a graph: the
worker processes, their heartbeat and watcher threads and the sweepers all find their connection
dead at their next query. A worker that is alive must go on beating its heartbeat on a new
connection and finish its job once; a few seconds without the database must not look like a
dead worker.

Heartbeat every 0.5 s, a job without one for 3 s counts as lost, sweeps every 0.5 s.
"""

from __future__ import annotations

import time

import pytest
from django.db import connection

from executions.models import Execution, ExecutionStatus
from runs.models import Run, RunStatus
from tests.conftest import Cluster, wait_for
from tests.faults.conftest import (
    figure,
    needs_postgres_and_redis,
    reconnect_test_process,
    wait_for_log,
)
from tests.faults.silent import SILENT_SLEEP

pytestmark = [pytest.mark.slow, pytest.mark.live, needs_postgres_and_redis, pytest.mark.django_db(transaction=True)]

CLUSTER_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.faults.settings",  # adds the silent agent in the workers
    "EXECUTIONS_HEARTBEAT_INTERVAL": "0.5",
    "EXECUTIONS_HEARTBEAT_TIMEOUT": "3",
    "RUNS_HEARTBEAT_INTERVAL": "0.5",
    "RUNS_HEARTBEAT_TIMEOUT": "3",
    "EXECUTIONS_SWEEP_INTERVAL": "0.5",
    "LOG_LEVEL": "INFO",
}
JOB_SECONDS = 8


def terminate_other_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_workers_finish_their_jobs_once_after_losing_their_connections(api, silent_sleep_registered) -> None:
    cluster = Cluster(workers=2, **CLUSTER_ENV)
    try:
        wait_for_log(cluster.log, "ready for work", 2)
        response = api.post("/api/v1/executions", {"type": "agent", "target_id": SILENT_SLEEP,
                                                   "inputs": {"seconds": JOB_SECONDS}}, format="json")
        assert response.status_code == 201, response.content
        execution_id = response.json()["execution_id"]
        thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
        response = api.post(f"/threads/{thread_id}/runs", {
            "assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}], "sleep": JOB_SECONDS},
        }, format="json")
        assert response.status_code == 200, response.content
        run_id = response.json()["run_id"]
        wait_for(lambda: Execution.objects.filter(pk=execution_id, status="running").exists()
                 and Run.objects.filter(pk=run_id, status="running").exists(), timeout=30, message=cluster.log())
        time.sleep(1)

        terminated = terminate_other_sessions()
        reconnect_test_process()  # the pool's other connections were among them
        assert terminated >= 2

        wait_for(
            lambda: Execution.objects.filter(pk=execution_id, status__in=ExecutionStatus.terminal()).exists()
            and Run.objects.filter(pk=run_id).exclude(status__in=RunStatus.active()).exists(),
            timeout=60, interval=0.2, message=cluster.log()[-4000:],
        )
        execution = Execution.objects.get(pk=execution_id)
        run = Run.objects.get(pk=run_id)
        claims = [e.data for e in execution.events.filter(type="status").order_by("seq")]
        figure(
            f"all {terminated} database sessions of the workers ended during a {JOB_SECONDS}s job: the "
            f"execution ended {execution.status} after {execution.attempts} attempt(s) "
            f"(status events {[c.get('status') + ('/' + c['reason'] if c.get('reason') else '') for c in claims]}); "
            f"the graph run ended {run.status} {run.error or ''}"
        )
        assert (execution.status, execution.attempts) == (ExecutionStatus.COMPLETED, 1), claims
        assert run.status == RunStatus.SUCCESS, run.error
    finally:
        cluster.stop()
        reconnect_test_process()
