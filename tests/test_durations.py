"""A duration reads the same wherever it is shown: both admins and both terminal commands."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from executions import services as execution_services
from executions.admin import progress_snapshots
from executions.models import Execution, ExecutionStatus
from project.durations import format_duration
from runs import services as run_services
from runs.admin_streams import run_status_snapshots
from runs.models import Run, RunStatus

LONG = 3725.4  # 1 h 2 min 5.4 s


@pytest.mark.parametrize(
    ("seconds", "shown", "in_a_table"),
    [
        (None, "-", "-"),
        (0.04, "0.0s", "0.0s"),
        (4.25, "4.2s", "4.2s"),
        (59.94, "59.9s", "59.9s"),
        (60, "1m 00s", "1m00s"),
        (187.9, "3m 07s", "3m07s"),
        (LONG, "1h 02m 05s", "1h02m05s"),
        (30 * 3600, "30h 00m 00s", "30h00m00s"),
    ],
)
def test_format_duration(seconds: float | None, shown: str, in_a_table: str) -> None:
    assert format_duration(seconds) == shown
    assert format_duration(seconds, separator="") == in_a_table


@pytest.mark.django_db
def test_admins_and_commands_show_one_duration_alike(alice) -> None:
    ended = timezone.now()
    execution = execution_services.execution_create(type="agent", target_id="echo", inputs={})
    Execution.objects.filter(pk=execution.pk).update(
        status=ExecutionStatus.COMPLETED, started_at=ended - timedelta(seconds=LONG), completed_at=ended
    )
    thread = run_services.thread_create(owner=alice)
    run = run_services.run_create(owner=alice, body={"assistant_id": "echo", "input": {}}, thread_id=thread.pk)
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.SUCCESS, started_at=ended - timedelta(seconds=LONG), ended_at=ended
    )

    assert [s["duration"] for s in progress_snapshots([execution.pk])] == ["1h 02m 05s"]
    assert [s["duration"] for s in run_status_snapshots([str(run.pk)])] == ["1h 02m 05s"]

    out = io.StringIO()
    call_command("executions", "list", stdout=out)
    assert out.getvalue().splitlines()[1].split()[-1] == "1h02m05s"
    out = io.StringIO()
    call_command("runs", "list", stdout=out)
    row = out.getvalue().splitlines()[1].split()
    assert row[0] == str(run.pk) and row[4] == "1h02m05s"
