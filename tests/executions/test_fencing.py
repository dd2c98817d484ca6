"""Fencing, in one process: two claims of one execution, the first one stale.

A worker that froze past the heartbeat timeout while recovery requeued its execution and another
worker claimed it must find every one of its writes refused (progress, log, heartbeat, finish,
retry), stop its target with the reason ``superseded`` and write nothing more; the new claim
goes on undisturbed. The real-process version (SIGSTOP / SIGCONT) is
tests/faults/test_frozen_worker.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from executions import recovery, runtime, services
from executions.models import Execution, ExecutionStatus
from executions.registry import agent, registry
from executions.transitions import ExecutionClaim

pytestmark = pytest.mark.django_db


def start(target_id: str = "echo", **config: Any) -> Execution:
    return services.execution_create(type="agent", target_id=target_id, inputs={}, config=config)


def freeze_past_the_timeout(execution_id: Any) -> None:
    """What a frozen worker looks like to recovery: its heartbeat stopped two minutes ago."""
    Execution.objects.filter(pk=execution_id).update(heartbeat_at=timezone.now() - timedelta(minutes=2))


def reap() -> dict[str, int]:
    return recovery.executions_reap_stale(heartbeat_timeout=30)


def claim_context(execution_id: Any) -> runtime.ExecutionContext:
    claimed = runtime.claim(execution_id)
    assert claimed is not None
    return runtime.ExecutionContext(claimed)


def superseded_pair(**config: Any) -> tuple[Execution, runtime.ExecutionContext, runtime.ExecutionContext]:
    """An execution claimed (stale), reaped back to pending, and claimed again (current)."""
    execution = start(**config)
    stale = claim_context(execution.pk)
    freeze_past_the_timeout(execution.pk)
    assert reap() == {"requeued": 1, "failed": 0}
    current = claim_context(execution.pk)
    return execution, stale, current


def snapshot(execution_id: Any) -> dict[str, Any]:
    return Execution.objects.filter(pk=execution_id).values(
        "status", "worker", "attempts", "heartbeat_at", "current_step", "step_name", "percentage",
        "outputs", "error", "event_seq",
    ).get()


def test_the_two_claims_name_different_attempts():
    execution, stale, current = superseded_pair()

    assert stale.claim == ExecutionClaim(execution.pk, stale.claim.worker, 1)
    assert current.claim == ExecutionClaim(execution.pk, current.claim.worker, 2)


def test_a_stale_progress_changes_nothing_and_raises_superseded():
    execution, stale, current = superseded_pair()
    before = snapshot(execution.pk)

    with pytest.raises(runtime.ExecutionSuperseded):
        stale.progress(current_step=7, total_steps=9, step_name="stale step")

    assert snapshot(execution.pk) == before
    assert stale.stop_reason == "superseded"
    # The current claim's progress is its own.
    current.progress(current_step=1, total_steps=2, step_name="current step")
    row = snapshot(execution.pk)
    assert (row["current_step"], row["step_name"], row["status"]) == (1, "current step", "running")


def test_a_superseded_is_a_cancelled_to_targets_that_catch_cancels():
    assert issubclass(runtime.ExecutionSuperseded, runtime.ExecutionCancelled)


def test_a_stale_log_changes_nothing_and_raises_superseded():
    execution, stale, _current = superseded_pair()
    before = snapshot(execution.pk)

    with pytest.raises(runtime.ExecutionSuperseded):
        stale.log("from the past")

    assert snapshot(execution.pk) == before
    assert not execution.events.filter(type="log").exists()


def test_a_stale_heartbeat_changes_nothing_and_stops_the_stale_target():
    execution, stale, current = superseded_pair()
    Execution.objects.filter(pk=execution.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=3))
    before = snapshot(execution.pk)

    runtime.Heartbeat._beat(stale)

    assert snapshot(execution.pk) == before
    assert stale.cancelled and stale.stop_reason == "superseded"
    with pytest.raises(runtime.ExecutionSuperseded):
        stale.check_cancelled()
    # The current claim beats.
    runtime.Heartbeat._beat(current)
    assert snapshot(execution.pk)["heartbeat_at"] > before["heartbeat_at"]
    assert not current.cancelled


def test_a_stale_cancellation_check_sees_it_was_superseded(settings):
    settings.EXECUTIONS_CANCEL_CHECK_INTERVAL = 0.0
    _execution, stale, current = superseded_pair()

    assert stale.cancelled and stale.stop_reason == "superseded"
    assert not current.cancelled and current.stop_reason is None


def test_a_stale_finish_changes_nothing():
    execution, stale, _current = superseded_pair()
    before = snapshot(execution.pk)

    assert not runtime.execution_finish(
        claim=stale.claim, status=ExecutionStatus.COMPLETED, outputs={"from": "stale"}, error=None
    )
    assert not runtime.execution_finish(
        claim=stale.claim, status=ExecutionStatus.FAILED, error={"type": "X", "message": "stale"}
    )
    assert snapshot(execution.pk) == before


def test_a_stale_retry_changes_nothing_and_reports_superseded():
    execution, stale, _current = superseded_pair(max_attempts=5)
    before = snapshot(execution.pk)

    outcome = runtime.execution_fail_or_retry(ctx=stale, error={"type": "X", "message": "stale"})

    assert outcome == "superseded"
    assert snapshot(execution.pk) == before


def test_a_cancel_of_the_current_claim_is_not_the_stale_worker_s_cancel():
    execution, stale, current = superseded_pair()
    services.execution_cancel(execution=Execution.objects.get(pk=execution.pk))

    with pytest.raises(runtime.ExecutionSuperseded):
        stale.progress(current_step=3)
    with pytest.raises(runtime.ExecutionCancelled) as raised:
        current.progress(current_step=3)
    assert not isinstance(raised.value, runtime.ExecutionSuperseded)
    assert (stale.stop_reason, current.stop_reason) == ("superseded", "cancelled")


def test_a_worker_whose_execution_recovery_failed_is_superseded_too():
    execution = start(max_attempts=1)
    stale = claim_context(execution.pk)
    freeze_past_the_timeout(execution.pk)
    assert reap() == {"requeued": 0, "failed": 1}
    before = snapshot(execution.pk)

    with pytest.raises(runtime.ExecutionSuperseded):
        stale.progress(current_step=2)
    assert not runtime.execution_finish(claim=stale.claim, status=ExecutionStatus.COMPLETED, outputs={})
    assert snapshot(execution.pk) == before
    assert before["status"] == "failed" and before["error"]["type"] == "worker_lost"


def test_execute_of_a_worker_superseded_mid_target_stops_it_and_writes_nothing_more():
    """The whole worker path: the target is superseded between two progress points (recovery
    requeues it and a second claim takes it, as another worker would) and then tries to go on."""
    steps_run: list[int] = []
    second: dict[str, runtime.ExecutionContext] = {}

    @agent("superseded-midway-test-agent")
    def superseded_midway(inputs, ctx):
        for step in (1, 2, 3):
            ctx.progress(current_step=step, total_steps=3, step_name=f"old {step}")
            steps_run.append(step)
            if step == 1:
                freeze_past_the_timeout(ctx.execution_id)
                assert reap()["requeued"] == 1
                second["ctx"] = claim_context(ctx.execution_id)
        return {"from": "old worker"}

    try:
        execution = start("superseded-midway-test-agent", max_attempts=3)
        assert runtime.execute(execution.pk) == "superseded"
        row = snapshot(execution.pk)
        assert steps_run == [1]
        assert (row["status"], row["attempts"], row["step_name"]) == ("running", 2, "old 1")
        types = list(execution.events.order_by("seq").values_list("type", "data"))
        # created, claim 1, progress of step 1, requeue, claim 2: the stale worker wrote nothing
        # after it lost the claim (no worker_stopped, no cancelled status).
        assert [t for t, _ in types] == ["created", "status", "progress", "status", "status"]
        assert types[3][1]["reason"] == "worker_lost" and types[3][1]["attempt"] == 1

        current = second["ctx"]
        current.progress(current_step=1, total_steps=1, step_name="new")
        assert runtime.execution_finish(
            claim=current.claim, status=ExecutionStatus.COMPLETED, outputs={"from": "new worker"}, error=None
        )
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.COMPLETED and execution.outputs == {"from": "new worker"}
        assert not execution.events.filter(data__status="cancelled").exists()
        assert not execution.events.filter(type="worker_stopped").exists()
    finally:
        registry.unregister("agent", "superseded-midway-test-agent")


def test_execute_of_a_worker_superseded_before_its_finish_keeps_the_new_claim_s_row():
    """A target that never reports progress: only its finish is refused."""

    @agent("silent-superseded-test-agent")
    def silent(inputs, ctx):
        freeze_past_the_timeout(ctx.execution_id)
        assert reap()["requeued"] == 1
        assert runtime.claim(ctx.execution_id) is not None
        return {"from": "old worker"}

    try:
        execution = start("silent-superseded-test-agent")
        assert runtime.execute(execution.pk) == "superseded"
        execution.refresh_from_db()
        assert (execution.status, execution.attempts, execution.outputs) == ("running", 2, None)
        assert execution.events.order_by("-seq").first().data["status"] == "running"
    finally:
        registry.unregister("agent", "silent-superseded-test-agent")


def test_a_cancel_of_the_worker_s_own_claim_is_still_cancelled_with_its_worker_stopped_event():
    @agent("own-cancel-test-agent")
    def own_cancel(inputs, ctx):
        services.execution_cancel(execution=Execution.objects.get(pk=ctx.execution_id))
        ctx.log("cleaning up")  # a cancelled target may still log while it cleans up
        ctx.progress(current_step=2)
        return {}

    try:
        execution = start("own-cancel-test-agent")
        assert runtime.execute(execution.pk) == "cancelled"
        events = list(execution.events.order_by("seq").values_list("type", "data"))
        assert events[-2][0] == "log"
        assert events[-1] == ("worker_stopped", {"reason": "cancelled", "worker": runtime._worker_name()})
    finally:
        registry.unregister("agent", "own-cancel-test-agent")
