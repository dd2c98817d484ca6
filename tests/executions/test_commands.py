"""`manage.py execute` and `manage.py executions …` as an operator uses them."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper
from django.utils import timezone

from executions import services
from executions.models import Execution, ExecutionEvent, ExecutionStatus
from executions.registry import Target, registry
from executions.services import executions_prune
from executions.terminal import ProgressBar, ProgressSnapshot
from tests.conftest import ROOT, subprocess_env, wait_for


def run(*args: str) -> tuple[str, str]:
    """Run a command in-process; returns (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str) -> tuple[BaseException, str, str]:
    """Run a command expected to fail; returns (the exception, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises((CommandError, SystemExit)) as caught:
        call_command(*args, stdout=out, stderr=err)
    return caught.value, out.getvalue(), err.getvalue()


def make(target_id: str = "echo", type_: str = "agent", *, status: str | None = None,
         finished_days_ago: float | None = None, **inputs) -> Execution:
    """An execution created through the service, then moved to ``status`` as a worker would."""
    execution = services.execution_create(type=type_, target_id=target_id, inputs=inputs)
    if status is not None:
        now = timezone.now()
        ended = now - timedelta(days=finished_days_ago or 0)
        fields = {"status": status}
        if finished_days_ago is not None:  # created before it started, as every real row is
            fields["created_at"] = ended - timedelta(seconds=5)
        if status != ExecutionStatus.PENDING:
            fields["started_at"] = ended - timedelta(seconds=3)
        if status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED):
            fields["completed_at"] = ended
        if status == ExecutionStatus.COMPLETED:
            fields["percentage"] = 100.0
            fields["outputs"] = inputs
        if status == ExecutionStatus.CANCELLED:
            fields["cancelled_at"] = ended
        Execution.objects.filter(pk=execution.pk).update(**fields)
        execution.refresh_from_db()
    return execution


# --- execute -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_execute_prints_the_id_alone_and_stores_inputs_parsed_as_json_when_they_parse():
    out, err = run(
        "execute", "echo",
        "--input", "seconds=2",
        "--input", "ratio=0.5",
        "--input", "flag=true",
        "--input", 'nested={"a": [1, 2]}',
        "--input", "text=hello world",
        "--input", "equation=a=b",
        "--input", "not_a_number=NaN",
    )

    execution = Execution.objects.get()
    assert out == f"{execution.pk}\n"
    assert err == ""
    assert execution.type == "agent"
    assert execution.status == ExecutionStatus.PENDING
    assert execution.owner is None
    assert execution.inputs == {
        "seconds": 2,
        "ratio": 0.5,
        "flag": True,
        "nested": {"a": [1, 2]},
        "text": "hello world",
        "equation": "a=b",
        "not_a_number": "NaN",
    }


@pytest.mark.django_db
def test_execute_validates_inputs_through_the_target_and_applies_defaults():
    out, _ = run("execute", "summarize", "--input", "text=One. Two.")

    execution = Execution.objects.get(pk=out.strip())
    assert execution.inputs == {"text": "One. Two.", "max_sentences": 3}


@pytest.mark.django_db
def test_input_flags_override_keys_of_inputs_json():
    out, _ = run("execute", "echo", "--inputs-json", '{"a": 1, "b": 2}', "--input", "b=3")

    assert Execution.objects.get(pk=out.strip()).inputs == {"a": 1, "b": 3}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inputs-json", "[1, 2]"], "must be a JSON object, got list"),
        (["--inputs-json", "{oops"], "not valid JSON"),
        (["--input", "no-equals-sign"], "expected key=value"),
        (["--input", "=1"], "expected key=value"),
        (["--inputs-json", "[" * 1000 + "]" * 1000], "nested too deeply"),
        # What the API refuses at its door: a terminal's bytes that are not UTF-8 decode to lone
        # surrogates (os.fsdecode), and the JSON escapes too.
        (["--input", "text=a\udcffb"], "not half of a pair): found in inputs.text."),
        (["--inputs-json", '{"text": "\\ud800"}'], "lone UTF-16 surrogate"),
        (["--input", 'text="a\\u0000"'], "Text may not contain the NUL character (U+0000): found in inputs.text."),
        (["--inputs-json", '{"text": ' + '{"a": ' * 100 + "1" + "}" * 100 + "}"],
         "more than 100 levels deep: found in inputs.text.a"),
    ],
)
def test_malformed_input_flags_are_rejected_before_anything_is_created(args, message):
    error, _, _ = run_failing("execute", "echo", *args)

    assert isinstance(error, CommandError)
    assert message in str(error)
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_type_is_inferred_from_the_registry():
    out, _ = run("execute", "countdown", "--input", "steps=3", "--input", "step_seconds=0.1")
    assert Execution.objects.get(pk=out.strip()).type == "pipeline"

    out, _ = run("execute", "sleep", "--input", "seconds=1")
    assert Execution.objects.get(pk=out.strip()).type == "agent"


@pytest.mark.django_db
def test_an_explicit_wrong_type_is_an_error_naming_the_real_type():
    error, _, _ = run_failing("execute", "countdown", "--type", "agent", "--input", "steps=1")

    assert isinstance(error, CommandError)
    assert "'countdown' is a pipeline, not an agent" in str(error)
    assert not Execution.objects.exists()


@pytest.fixture
def countdown_agent():
    """An agent sharing its id with the `countdown` pipeline, making the id ambiguous."""
    target = registry.register(
        Target(id="countdown", type="agent", description="", inputs=None,
               agent_function=lambda inputs, ctx: inputs)
    )
    yield target
    registry.unregister("agent", "countdown")


@pytest.mark.django_db
def test_an_id_registered_as_agent_and_pipeline_needs_type(countdown_agent):
    error, _, _ = run_failing("execute", "countdown")
    assert isinstance(error, CommandError)
    assert "both as an agent and as a pipeline" in str(error)
    assert "--type" in str(error)
    assert not Execution.objects.exists()

    out, _ = run("execute", "countdown", "--type", "agent", "--input", "x=1")
    assert Execution.objects.get(pk=out.strip()).type == "agent"


@pytest.mark.django_db
def test_unknown_target_is_an_error_listing_the_known_ones():
    error, _, _ = run_failing("execute", "nope")

    assert isinstance(error, CommandError)
    assert "No agent or pipeline named 'nope' is registered" in str(error)
    assert "countdown" in str(error) and "echo" in str(error)
    assert not Execution.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "inputs.seconds: This field is required."),
        (["--input", "seconds=-1"], "inputs.seconds: Ensure this value is greater than or equal to 0."),
        (["--input", "seconds=soon"], "inputs.seconds: A valid number is required."),
        (["--input", "seconds=1", "--input", "secs=1"], "inputs.secs: Unknown input for agent 'sleep'."),
    ],
)
def test_invalid_inputs_are_an_error_naming_the_field(inputs, message):
    error, _, _ = run_failing("execute", "sleep", *inputs)

    assert isinstance(error, CommandError)
    assert message in str(error)
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_user_sets_the_owner(alice):
    out, _ = run("execute", "echo", "--user", "alice")
    assert Execution.objects.get(pk=out.strip()).owner == alice

    error, _, _ = run_failing("execute", "echo", "--user", "ghost")
    assert "No user named 'ghost'" in str(error)
    assert Execution.objects.count() == 1


@pytest.mark.live
def test_wait_shows_progress_and_prints_the_outputs_as_json(qcluster):
    out, err = run(
        "execute", "countdown", "--input", "steps=2", "--input", "step_seconds=0.5", "--wait"
    )

    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.COMPLETED
    # stdout is the outputs alone, so it can be piped into jq.
    assert json.loads(out) == {"remaining": 0, "steps": 2}
    assert out == json.dumps(json.loads(out), indent=2) + "\n"  # indented (jsonb orders keys its way)
    lines = err.splitlines()
    assert lines[0].startswith(f"Execution {execution.pk} (pipeline 'countdown') queued")
    # StringIO is not a terminal: one plain line per change, no carriage returns.
    assert "\r" not in err
    assert any("step 1/2" in line and "tick 2" in line and "(running)" in line for line in lines)
    assert any("step 2/2" in line and "tick 1" in line and "(running)" in line for line in lines)
    assert lines[-1].startswith("[" + "#" * 30 + "]  100%  step 2/2")
    assert lines[-1].endswith("(completed)")
    assert len(lines) == len(set(lines)), "an unchanged line was printed twice"


@pytest.mark.live
def test_wait_on_a_failing_agent_prints_the_error_and_exits_1(qcluster):
    error, out, err = run_failing("execute", "fail", "--input", "message=boom", "--wait")

    assert isinstance(error, SystemExit) and error.code == 1
    assert out == ""
    assert err.splitlines()[-1] == f"Execution {Execution.objects.get().pk} failed: TargetFailed: boom"


@pytest.mark.django_db(transaction=True)
def test_wait_exits_1_when_someone_else_cancels_the_execution():
    outcome: dict = {}
    err = io.StringIO()

    def follow() -> None:
        try:
            call_command("execute", "sleep", "--input", "seconds=30", "--wait",
                         stdout=io.StringIO(), stderr=err)
        except SystemExit as exc:
            outcome["code"] = exc.code
        finally:
            from django.db import connection

            connection.close()

    thread = threading.Thread(target=follow)
    thread.start()
    execution = wait_for(lambda: Execution.objects.first(), message="the execution row")
    services.execution_cancel(execution=execution)
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert outcome == {"code": 1}
    assert err.getvalue().splitlines()[-1] == f"Execution {execution.pk} was cancelled."


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_ctrl_c_during_wait_cancels_the_execution_and_exits_130():
    # A real process and a real SIGINT: KeyboardInterrupt lands wherever the command happens to be.
    process = subprocess.Popen(
        [sys.executable, "manage.py", "execute", "sleep", "--input", "seconds=30", "--wait"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first_line = process.stderr.readline()  # printed once the command is following the row
        assert "queued; Ctrl-C cancels it." in first_line
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()

    execution = Execution.objects.get()
    assert process.returncode == 130
    assert out == ""
    assert f"Interrupted: execution {execution.pk} cancelled." in err
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.cancelled_at is not None


# --- progress bar ------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def snapshot(percentage: float, step: int, name: str, status: str = "running") -> ProgressSnapshot:
    return ProgressSnapshot(status=status, percentage=percentage, current_step=step,
                            total_steps=4, step_name=name)


def test_progress_bar_redraws_one_line_in_place_on_a_terminal():
    terminal = FakeTerminal()
    bar = ProgressBar(OutputWrapper(terminal), width=10)

    bar.update(snapshot(0, 1, "a long step name"))
    bar.update(snapshot(0, 1, "a long step name"))  # unchanged: nothing drawn
    bar.update(snapshot(50, 3, "short"))
    bar.close()

    first = "[..........]    0%  step 1/4  a long step name  (running)"
    second = "[#####.....]   50%  step 3/4  short  (running)"
    padding = " " * (len(first) - len(second))
    assert terminal.getvalue() == f"\r{first}\r{second}{padding}\n"


def test_progress_bar_prints_a_plain_line_per_step_or_tenth_when_not_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(OutputWrapper(stream), width=10)

    for percentage in (25, 25.5, 26, 29.9, 30, 31):
        bar.update(snapshot(percentage, 2, "b"))
    bar.update(snapshot(31, 3, "c"))
    bar.update(snapshot(100, 4, "d", status="completed"))
    bar.close()

    assert stream.getvalue() == (
        "[##........]   25%  step 2/4  b  (running)\n"
        "[###.......]   30%  step 2/4  b  (running)\n"
        "[###.......]   31%  step 3/4  c  (running)\n"
        "[##########]  100%  step 4/4  d  (completed)\n"
    )


# --- executions list ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_shows_a_table_newest_first():
    older = make("echo", status=ExecutionStatus.COMPLETED, a=1)
    newer = make("countdown", "pipeline", steps=2)

    out, _ = run("executions", "list")

    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATUS", "TYPE", "TARGET", "PROGRESS", "CREATED", "DURATION"]
    assert [row.split()[0] for row in rows] == [str(newer.pk), str(older.pk)]
    assert rows[0].split()[1:5] == ["pending", "pipeline", "countdown", "0%"]
    assert rows[0].split()[-1] == "-"  # never started: no duration
    assert rows[1].split()[1:5] == ["completed", "agent", "echo", "100%"]
    assert rows[1].split()[-1] == "3.0s"
    assert timezone.localtime(older.created_at).strftime("%Y-%m-%d %H:%M:%S") in rows[1]


@pytest.mark.django_db
def test_list_filters_by_status_target_and_type_and_limits():
    failed = make("fail", status=ExecutionStatus.FAILED)
    done = make("echo", status=ExecutionStatus.COMPLETED)
    pending_echo = make("echo")
    pipeline = make("countdown", "pipeline", steps=1)

    def listed(*args: str) -> list[str]:
        out, _ = run("executions", "list", *args)
        return [line.split()[0] for line in out.splitlines()[1:]]

    assert listed("--status", "failed", "completed") == [str(done.pk), str(failed.pk)]
    assert listed("--status", "failed", "--status", "pending") == [
        str(pipeline.pk), str(pending_echo.pk), str(failed.pk)
    ]
    assert listed("--target", "echo") == [str(pending_echo.pk), str(done.pk)]
    assert listed("--target", "echo", "--status", "pending") == [str(pending_echo.pk)]
    assert listed("--type", "pipeline") == [str(pipeline.pk)]
    assert listed("--limit", "2") == [str(pipeline.pk), str(pending_echo.pk)]

    out, err = run("executions", "list", "--limit", "2")
    assert len(out.splitlines()) == 3  # header and two rows: stdout stays a pipeable table
    assert err == "(2 of 4 shown; --limit shows more)\n"
    _, err = run("executions", "list", "--limit", "4")
    assert err == ""
    out, _ = run("executions", "list", "--status", "cancelled")
    assert out == "No executions.\n"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "must be at least 1"),
        (["--limit", "many"], "'many' is not a whole number"),
        (["--status", "done"], "invalid choice: 'done'"),
    ],
)
def test_list_rejects_bad_arguments(args, message):
    error, _, _ = run_failing("executions", "list", *args)

    assert isinstance(error, CommandError)
    assert message in str(error)


def test_a_subcommand_is_required():
    error, _, _ = run_failing("executions")

    assert isinstance(error, CommandError)
    assert "SUBCOMMAND" in str(error)


# --- executions cancel -------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_reports_each_id_and_exits_1_when_any_failed():
    pending = make("sleep", seconds=5)
    cancelled = make("sleep", status=ExecutionStatus.CANCELLED, seconds=5)
    completed = make("echo", status=ExecutionStatus.COMPLETED)
    unknown = uuid.uuid4()

    error, out, err = run_failing(
        "executions", "cancel", str(pending.pk), str(cancelled.pk), str(completed.pk), str(unknown)
    )

    assert out.splitlines() == [f"{pending.pk}: cancelled", f"{cancelled.pk}: already cancelled"]
    assert err.splitlines() == [
        f"{completed.pk}: error: already completed, cannot cancel",
        f"{unknown}: error: no such execution",
    ]
    assert isinstance(error, CommandError) and error.returncode == 1
    assert str(error) == "2 of 4 could not be cancelled."
    pending.refresh_from_db()
    completed.refresh_from_db()
    assert pending.status == ExecutionStatus.CANCELLED and pending.cancelled_at is not None
    assert completed.status == ExecutionStatus.COMPLETED


@pytest.mark.django_db
def test_cancel_succeeds_when_every_id_ends_cancelled():
    running = make("sleep", status=ExecutionStatus.RUNNING, seconds=5)

    out, err = run("executions", "cancel", str(running.pk))
    assert out == f"{running.pk}: cancelled\n" and err == ""
    out, err = run("executions", "cancel", str(running.pk))
    assert out == f"{running.pk}: already cancelled\n" and err == ""
    running.refresh_from_db()
    assert running.status == ExecutionStatus.CANCELLED


@pytest.mark.django_db
@pytest.mark.parametrize(("subcommand", "status"), [("cancel", "pending"), ("retry", "failed")])
def test_ids_that_are_not_uuids_are_rejected_before_any_id_is_acted_on(subcommand, status):
    eligible = make("echo", status=status)

    error, out, _ = run_failing("executions", subcommand, str(eligible.pk), "42")

    assert isinstance(error, CommandError)
    assert "'42' is not an execution id (expected a UUID" in str(error)
    assert out == ""
    assert list(Execution.objects.values_list("pk", "status")) == [(eligible.pk, status)]


# --- executions retry --------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_prints_new_ids_and_exits_1_when_any_failed():
    failed = make("sleep", status=ExecutionStatus.FAILED, seconds=2)
    running = make("sleep", status=ExecutionStatus.RUNNING, seconds=2)
    unknown = uuid.uuid4()

    error, out, err = run_failing(
        "executions", "retry", str(failed.pk), str(running.pk), str(unknown)
    )

    new = Execution.objects.get(retry_of=failed)
    assert out == f"{new.pk}\n"
    assert (new.status, new.type, new.target_id, new.inputs) == (
        ExecutionStatus.PENDING, "agent", "sleep", {"seconds": 2.0}
    )
    assert err.splitlines() == [
        f"{running.pk}: error: still running, cannot retry",
        f"{unknown}: error: no such execution",
    ]
    assert isinstance(error, CommandError) and str(error) == "2 of 3 could not be retried."
    assert Execution.objects.count() == 3


@pytest.mark.django_db
def test_retry_of_finished_executions_succeeds():
    completed = make("echo", status=ExecutionStatus.COMPLETED, a=1)
    cancelled = make("echo", status=ExecutionStatus.CANCELLED, b=2)

    out, err = run("executions", "retry", str(completed.pk), str(cancelled.pk))

    new_ids = out.split()
    assert err == ""
    assert [Execution.objects.get(pk=pk).retry_of for pk in new_ids] == [completed, cancelled]


# --- executions prune --------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_deletes_only_finished_executions_older_than_the_cutoff():
    old_completed = make("echo", status=ExecutionStatus.COMPLETED, finished_days_ago=10)
    old_failed = make("fail", status=ExecutionStatus.FAILED, finished_days_ago=3)
    recent = make("echo", status=ExecutionStatus.COMPLETED, finished_days_ago=0.1)
    active = make("sleep", seconds=1)
    Execution.objects.filter(pk=active.pk).update(created_at=timezone.now() - timedelta(days=30))

    out, _ = run("executions", "prune", "--older-than", "2", "--dry-run")
    assert out == "Would delete 2 executions finished more than 2 days ago (dry run, nothing deleted).\n"
    assert Execution.objects.count() == 4

    out, _ = run("executions", "prune", "--older-than", "5")
    assert out == "Deleted 1 execution finished more than 5 days ago.\n"
    assert set(Execution.objects.values_list("pk", flat=True)) == {old_failed.pk, recent.pk, active.pk}
    assert not old_completed.events.exists()

    out, _ = run("executions", "prune", "--older-than", "0.5")
    assert out == "Deleted 1 execution finished more than 0.5 days ago.\n"
    assert set(Execution.objects.values_list("pk", flat=True)) == {recent.pk, active.pk}


@pytest.mark.django_db
def test_prune_deletes_in_batches_oldest_first_and_reports_progress():
    old = [make("echo", status=ExecutionStatus.COMPLETED, finished_days_ago=10 + i) for i in range(7)]
    kept = make("echo", status=ExecutionStatus.COMPLETED, finished_days_ago=1)
    retry = services.execution_retry(execution=old[0])  # a retry outlives the execution it retried

    out, _ = run("executions", "prune", "--older-than", "5", "--batch-size", "2")

    assert out == "Deleted 7 executions finished more than 5 days ago.\n"
    assert set(Execution.objects.values_list("pk", flat=True)) == {kept.pk, retry.pk}
    assert ExecutionEvent.objects.filter(execution_id__in=[e.pk for e in old]).count() == 0
    assert Execution.objects.get(pk=retry.pk).retry_of_id is None
    assert executions_prune(older_than=timezone.now() - timedelta(days=5)) == 0


@pytest.mark.django_db
def test_scheduled_prune_keeps_the_retention_period_and_runs_once_per_interval(settings, monkeypatch):
    from executions import recovery, retention

    # Every worker's sweeper calls it (the sweeps registered at start-up).
    assert retention.executions_prune_expired in recovery._sweeps
    recovery_sweep = retention.executions_prune_expired
    monkeypatch.setattr(retention, "_last_run", None)
    make("echo", status=ExecutionStatus.FAILED, finished_days_ago=40)
    recent = make("echo", status=ExecutionStatus.COMPLETED, finished_days_ago=20)
    pending = make("echo")
    Execution.objects.filter(pk=pending.pk).update(created_at=timezone.now() - timedelta(days=90))

    settings.EXECUTIONS_RETENTION_DAYS = 0  # the default: nothing is ever deleted
    recovery_sweep()
    assert Execution.objects.count() == 3

    settings.EXECUTIONS_RETENTION_DAYS = 30
    settings.EXECUTIONS_RETENTION_INTERVAL = 300
    recovery_sweep()
    assert set(Execution.objects.values_list("pk", flat=True)) == {recent.pk, pending.pk}

    # Within the interval the sweep does not look again; after it, it does.
    settings.EXECUTIONS_RETENTION_DAYS = 10
    recovery_sweep()
    assert Execution.objects.filter(pk=recent.pk).exists()
    settings.EXECUTIONS_RETENTION_INTERVAL = 0
    recovery_sweep()
    assert set(Execution.objects.values_list("pk", flat=True)) == {pending.pk}


@pytest.mark.parametrize(
    ("days", "message"),
    [
        ("0", "must be a positive number of days"),
        ("-1", "must be a positive number of days"),
        ("nan", "must be a positive number of days"),
        ("inf", "must be a positive number of days"),
        ("week", "'week' is not a number of days"),
        ("1e12", "days reaches before the year 1"),
    ],
)
def test_prune_rejects_days_that_are_not_a_positive_number(days, message):
    error, _, _ = run_failing("executions", "prune", "--older-than", days)

    assert isinstance(error, CommandError)
    assert message in str(error)


def test_prune_requires_older_than():
    error, _, _ = run_failing("executions", "prune", "--dry-run")

    assert "--older-than" in str(error)
