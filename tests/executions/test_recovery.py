"""Recovery from the row: lost workers and lost queue messages."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from executions import recovery, runtime, services
from executions.models import Execution, ExecutionStatus
from tests.conftest import Cluster, wait_for

pytestmark = pytest.mark.django_db


def running_with_old_heartbeat(seconds_ago: float = 120, **config) -> Execution:
    execution = services.execution_create(type="agent", target_id="echo", config=config)
    assert runtime.claim(execution.pk) is not None
    Execution.objects.filter(pk=execution.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds_ago), worker="deadhost:4242"
    )
    return execution


def test_a_running_execution_whose_worker_stopped_beating_is_requeued_then_runs():
    execution = running_with_old_heartbeat()

    assert recovery.executions_reap_stale(heartbeat_timeout=30) == {"requeued": 1, "failed": 0}

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PENDING and execution.worker == ""
    last = execution.events.order_by("-seq").first()
    assert last.data == {
        "status": "pending", "reason": "worker_lost", "worker": "deadhost:4242", "attempt": 1
    }
    assert runtime.execute(execution.pk) == "completed"
    execution.refresh_from_db()
    assert execution.attempts == 2


def test_a_job_that_keeps_losing_its_worker_fails_after_its_attempts_naming_the_worker():
    execution = running_with_old_heartbeat(max_attempts=1)

    assert recovery.executions_reap_stale(heartbeat_timeout=30) == {"requeued": 0, "failed": 1}

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error["type"] == "worker_lost"
    assert "deadhost:4242" in execution.error["message"]
    assert "after 1 attempt" in execution.error["message"]
    assert execution.events.order_by("-seq").first().data["attempt"] == 1


def claimed_by(worker: str, **config) -> Execution:
    execution = services.execution_create(type="agent", target_id="echo", config=config)
    assert runtime.claim(execution.pk) is not None
    Execution.objects.filter(pk=execution.pk).update(worker=worker)
    return execution


def test_the_executions_of_a_worker_seen_dead_are_reaped_at_once_and_only_once():
    requeued, last_attempt, others = claimed_by("host:1"), claimed_by("host:1", max_attempts=1), claimed_by("host:2")
    seen_dead_at = timezone.now()
    # Claimed after the death was seen: a new process that was given the dead one's pid.
    reused = claimed_by("host:1")
    Execution.objects.filter(pk=reused.pk).update(started_at=seen_dead_at + timedelta(milliseconds=1))

    recovery.worker_jobs_reap(worker="host:1", claimed_before=seen_dead_at, cause="was killed by SIGKILL")

    statuses = dict(Execution.objects.values_list("pk", "status"))
    assert statuses == {requeued.pk: "pending", last_attempt.pk: "failed", others.pk: "running", reused.pk: "running"}
    last = requeued.events.order_by("-seq").first()
    assert last.data == {"status": "pending", "reason": "worker_lost", "worker": "host:1", "attempt": 1}
    last_attempt.refresh_from_db()
    assert last_attempt.error["type"] == "worker_lost"
    assert last_attempt.error["message"] == "The worker host:1 was killed by SIGKILL after 1 attempt."
    # Reaped again (a reaper that retried): nothing more happens.
    again = recovery.executions_reap_worker(worker="host:1", claimed_before=seen_dead_at, cause="was killed by SIGKILL")
    assert again == {"requeued": 0, "failed": 0}
    assert requeued.events.filter(data__reason="worker_lost").count() == 1


def test_a_live_heartbeat_is_left_alone():
    execution = running_with_old_heartbeat(seconds_ago=5)

    assert recovery.executions_reap_stale(heartbeat_timeout=30) == {"requeued": 0, "failed": 0}
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.RUNNING


def test_a_pending_execution_whose_message_was_lost_is_enqueued_again(monkeypatch):
    enqueued = []
    monkeypatch.setattr(recovery, "enqueue_execution", lambda e: enqueued.append(e.pk))
    monkeypatch.setattr(recovery, "broker_queue_size", lambda: 0)
    old = services.execution_create(type="agent", target_id="echo")
    Execution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    services.execution_create(type="agent", target_id="echo")  # fresh: its message is on its way

    assert recovery.executions_requeue_stranded(older_than=30) == 1
    assert enqueued == [old.pk]
    # Not again until another period has passed.
    assert recovery.executions_requeue_stranded(older_than=30) == 0


def test_nothing_is_requeued_while_the_broker_still_holds_messages(monkeypatch):
    monkeypatch.setattr(recovery, "broker_queue_size", lambda: 7)
    old = services.execution_create(type="agent", target_id="echo")
    Execution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))

    assert recovery.executions_requeue_stranded(older_than=30) == 0


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_kill_9_of_a_busy_worker_the_job_is_rerun_by_another_worker(api):
    # Default heartbeat settings (30 s timeout): the cluster sees its worker die and reaps at once.
    cluster = Cluster(workers=2)
    try:
        execution_id = api.post(
            "/api/v1/executions", {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 3}}, format="json"
        ).json()["execution_id"]
        first = wait_for(
            lambda: Execution.objects.filter(pk=execution_id, status="running").first(),
            timeout=30, message=cluster.log(),
        )
        worker_pid = int(first.worker.rsplit(":", 1)[1])

        os.kill(worker_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not Execution.objects.filter(pk=execution_id, status="running", worker=first.worker).exists(),
                 timeout=30, message=cluster.log())
        assert time.monotonic() - killed_at < 10

        done = wait_for(
            lambda: Execution.objects.filter(pk=execution_id, status__in=["completed", "failed"]).first(),
            timeout=45, interval=0.2, message="the killed job to be re-run",
        )
        assert done.status == "completed", done.error
        assert done.attempts == 2
        assert done.worker != first.worker
        reasons = [e.data.get("reason") for e in done.events.filter(type="status")]
        assert "worker_lost" in reasons
    finally:
        cluster.stop()


def test_recover_command_reports_what_it_did(monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    monkeypatch.setattr(recovery, "broker_queue_size", lambda: 0)
    running_with_old_heartbeat(max_attempts=1)
    out = StringIO()

    call_command("executions", "recover", "--heartbeat-timeout", "30", stdout=out)

    assert out.getvalue().strip() == "Lost workers: 0 requeued, 1 failed. Lost queue messages: 0 enqueued again."


def test_due_retries_are_enqueued_and_early_ones_wait(monkeypatch):
    enqueued = []
    monkeypatch.setattr(recovery, "enqueue_execution", lambda e: enqueued.append(e.pk))
    due = services.execution_create(type="agent", target_id="echo")
    early = services.execution_create(type="agent", target_id="echo")
    Execution.objects.filter(pk=due.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    Execution.objects.filter(pk=early.pk).update(not_before=timezone.now() + timedelta(minutes=5))

    assert recovery.executions_enqueue_due_retries() == 1
    assert enqueued == [due.pk]
    assert Execution.objects.get(pk=due.pk).not_before is None
