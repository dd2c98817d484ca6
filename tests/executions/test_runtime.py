"""Worker-side behaviour, in-process: claims, progress, events, cancellation, failures, timeouts."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django_q.exceptions import TimeoutException

from executions import runtime, services
from executions.models import Execution, ExecutionStatus
from executions.registry import agent, registry

pytestmark = pytest.mark.django_db


def start(target_id: str, type_: str = "agent", **inputs) -> Execution:
    return services.execution_create(type=type_, target_id=target_id, inputs=inputs)


def event_types(execution: Execution) -> list[str]:
    return list(execution.events.order_by("seq").values_list("type", flat=True))


def test_claim_is_exclusive_so_a_redelivered_message_does_not_run_twice():
    execution = start("echo", value=1)

    assert runtime.execute(execution.pk) == "completed"
    assert runtime.execute(execution.pk) == "skipped"
    execution.refresh_from_db()
    assert execution.attempts == 1
    assert execution.outputs == {"value": 1}


def test_pipeline_writes_a_progress_event_for_every_step_with_gapless_seq():
    execution = start("text_report", "pipeline", text="Alpha beta. Gamma delta. Alpha again.")

    runtime.execute(execution.pk)

    events = list(execution.events.order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events] == ["created", "status"] + ["progress"] * 5 + ["status"]
    steps = [e.data["step_name"] for e in events if e.type == "progress"]
    assert steps == ["normalize", "split sentences", "word statistics", "summarize", "render report"]
    assert [e.data["percentage"] for e in events if e.type == "progress"] == [0.0, 20.0, 40.0, 60.0, 80.0]
    assert events[-1].data == {"status": "completed"}
    execution.refresh_from_db()
    assert execution.event_seq == len(events)


def test_percentage_progress_is_throttled(settings):
    settings.EXECUTIONS_PROGRESS_INTERVAL = 10.0

    @agent("chatty-test-agent")
    def chatty(inputs, ctx):
        for i in range(500):
            ctx.progress(percentage=i / 5)
        return {}

    try:
        execution = start("chatty-test-agent")
        runtime.execute(execution.pk)
    finally:
        registry.unregister("agent", "chatty-test-agent")
    # The first call writes; the other 499 fall inside the interval.
    assert event_types(execution).count("progress") == 1


def test_exceptions_become_failed_with_type_message_and_traceback():
    @agent("raising-test-agent")
    def raising(inputs, ctx):
        raise KeyError("missing thing")

    try:
        execution = start("raising-test-agent")
        assert runtime.execute(execution.pk) == "failed"
    finally:
        registry.unregister("agent", "raising-test-agent")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error["type"] == "KeyError"
    assert "missing thing" in execution.error["message"]
    assert "Traceback" in execution.error["details"]["traceback"]
    assert execution.completed_at is not None


def test_django_q_timeout_becomes_failed_with_type_timeout_and_is_re_raised():
    @agent("slow-test-agent")
    def slow(inputs, ctx):
        raise TimeoutException("Task exceeded maximum timeout value (1 seconds)")

    try:
        execution = start("slow-test-agent")
        with pytest.raises(TimeoutException):
            runtime.execute(execution.pk)
    finally:
        registry.unregister("agent", "slow-test-agent")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error["type"] == "timeout"


def test_outputs_that_are_not_json_fail_the_execution():
    @agent("unjsonable-test-agent")
    def unjsonable(inputs, ctx):
        return {"when": object()}

    try:
        execution = start("unjsonable-test-agent")
        runtime.execute(execution.pk)
    finally:
        registry.unregister("agent", "unjsonable-test-agent")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED and execution.error["type"] == "TypeError"


def test_a_target_unregistered_after_creation_fails_cleanly():
    @agent("ephemeral-test-agent")
    def ephemeral(inputs, ctx):
        return {}

    execution = start("ephemeral-test-agent")
    registry.unregister("agent", "ephemeral-test-agent")

    runtime.execute(execution.pk)

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error["type"] == "target_not_found"


def test_cancel_while_running_wins_over_completion_and_the_worker_records_its_stop():
    """The cancel lands between the target's last progress point and its finish."""

    @agent("cancelled-midway-test-agent")
    def cancelled_midway(inputs, ctx):
        services.execution_cancel(execution=Execution.objects.get(pk=ctx.execution_id))
        return {"result": "too late"}

    try:
        execution = start("cancelled-midway-test-agent")
        assert runtime.execute(execution.pk) == "cancelled"
    finally:
        registry.unregister("agent", "cancelled-midway-test-agent")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.outputs is None and execution.completed_at is None
    assert event_types(execution)[-2:] == ["status", "worker_stopped"]


def test_progress_after_cancel_stops_the_target():
    steps_run = []

    @agent("stepping-test-agent")
    def stepping(inputs, ctx):
        for i in range(1, 6):
            ctx.progress(current_step=i, total_steps=5, step_name=f"step {i}")
            steps_run.append(i)
            if i == 2:
                services.execution_cancel(execution=Execution.objects.get(pk=ctx.execution_id))
        return {}

    try:
        execution = start("stepping-test-agent")
        assert runtime.execute(execution.pk) == "cancelled"
    finally:
        registry.unregister("agent", "stepping-test-agent")
    assert steps_run == [1, 2]


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_sleep_from_another_connection_stops_it_within_a_second():
    execution = start("sleep", seconds=30)
    outcome = {}

    def work() -> None:
        try:
            outcome["result"] = runtime.execute(execution.pk)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 10
    while Execution.objects.get(pk=execution.pk).status != ExecutionStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    cancelled_at = time.monotonic()
    services.execution_cancel(execution=Execution.objects.get(pk=execution.pk))
    worker.join(timeout=5)

    assert not worker.is_alive()
    assert time.monotonic() - cancelled_at < 1.0
    assert outcome["result"] == "cancelled"
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_heartbeat_is_beaten_while_a_target_runs(settings):
    settings.EXECUTIONS_HEARTBEAT_INTERVAL = 0.1
    execution = start("sleep", seconds=0.6)
    runtime_thread = threading.Thread(target=lambda: (runtime.execute(execution.pk), connection.close()))
    runtime_thread.start()
    beats = set()
    while runtime_thread.is_alive():
        row = Execution.objects.filter(pk=execution.pk).values("status", "heartbeat_at").get()
        if row["status"] == ExecutionStatus.RUNNING:
            beats.add(row["heartbeat_at"])
        time.sleep(0.03)
    runtime_thread.join()
    assert len(beats) >= 3
    assert Execution.objects.get(pk=execution.pk).heartbeat_at is None


def test_summarize_keeps_the_highest_scoring_sentences_in_text_order():
    text = (
        "Solar power is growing fast. Solar panels are cheaper every year. "
        "My cat likes boxes. Solar power and cheaper panels change energy markets."
    )
    execution = start("summarize", text=text, max_sentences=2)

    runtime.execute(execution.pk)

    execution.refresh_from_db()
    # Mean word weights (solar=3 is the top count): 0.58, 0.60, 0.25, 0.57.
    assert execution.outputs["sentences"] == [
        "Solar power is growing fast.",
        "Solar panels are cheaper every year.",
    ]
    assert execution.outputs["sentence_count"] == 4


def test_countdown_reports_each_tick():
    execution = start("countdown", "pipeline", steps=3, step_seconds=0)

    runtime.execute(execution.pk)

    execution.refresh_from_db()
    assert execution.outputs == {"remaining": 0, "steps": 3}
    progress = [e.data["step_name"] for e in execution.events.filter(type="progress").order_by("seq")]
    assert progress == ["tick 3", "tick 2", "tick 1"]


def test_a_failing_execution_that_opted_in_is_retried_after_a_backoff_then_fails():
    execution = services.execution_create(
        type="agent", target_id="fail", inputs={"message": "flaky"}, config={"max_attempts": 2, "retry_backoff": 30}
    )

    assert runtime.execute(execution.pk) == "retrying"
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PENDING
    assert execution.error["message"] == "flaky"
    assert execution.not_before is not None
    # Not before its backoff: a message delivered early does not start it.
    assert runtime.execute(execution.pk) == "skipped"

    Execution.objects.filter(pk=execution.pk).update(not_before=execution.not_before - timedelta(seconds=31))
    assert runtime.execute(execution.pk) == "failed"
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED and execution.attempts == 2


def test_a_retry_that_succeeds_clears_the_error():
    calls = []

    @agent("second-time-lucky-test-agent")
    def second_time_lucky(inputs, ctx):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return {"ok": True}

    try:
        execution = services.execution_create(
            type="agent", target_id="second-time-lucky-test-agent", config={"max_attempts": 3, "retry_backoff": 0}
        )
        assert runtime.execute(execution.pk) == "retrying"
        assert runtime.execute(execution.pk) == "completed"
    finally:
        registry.unregister("agent", "second-time-lucky-test-agent")
    execution.refresh_from_db()
    assert execution.outputs == {"ok": True} and execution.error is None and execution.attempts == 2


def test_retry_backoff_doubles_and_is_capped():
    assert [runtime.retry_delay(attempt=a, base=2) for a in (1, 2, 3)] == [2, 4, 8]
    assert runtime.retry_delay(attempt=20, base=2) == 300
