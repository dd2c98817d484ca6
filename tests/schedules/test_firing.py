"""When schedules fire: exactly once per fire time, once after an outage, skip or queue behind
a running execution. The clock is moved (``schedules_fire_due(now=…)``) instead of waited for;
tests/schedules/test_clusters.py waits for real minutes with real clusters."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from executions.services import execution_cancel
from schedules.firing import MAX_QUEUED, firings_prune, schedules_fire_due
from schedules.models import FiringOutcome, Schedule, ScheduleFiring
from schedules.services import (
    schedule_create,
    schedule_set_enabled,
    schedule_trigger,
    schedule_update,
)
from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db


def every_minute(owner, **fields) -> Schedule:
    fields.setdefault("inputs", {"from": "schedule"})
    return schedule_create(owner=owner, type="agent", target_id="echo", cron="* * * * *", **fields)


def executions_of(schedule: Schedule) -> list[Execution]:
    return list(Execution.objects.filter(schedule=schedule).order_by("created_at"))


def finish(execution: Execution) -> None:
    execution_cancel(execution=execution)  # any terminal status ends the overlap


def test_a_due_schedule_fires_once_and_moves_to_its_next_fire_time(alice):
    schedule = every_minute(alice)
    due = schedule.next_run_at
    assert due.second == 0 and due > timezone.now()

    assert schedules_fire_due(now=due - timedelta(seconds=1)) == 0  # not yet
    assert schedules_fire_due(now=due + timedelta(seconds=2)) == 1
    assert schedules_fire_due(now=due + timedelta(seconds=3)) == 0  # same window: nothing more

    [execution] = executions_of(schedule)
    assert execution.status == ExecutionStatus.PENDING and execution.owner == alice
    assert (execution.type, execution.target_id, execution.inputs) == ("agent", "echo", {"from": "schedule"})
    schedule.refresh_from_db()
    assert schedule.next_run_at == due + timedelta(minutes=1)
    assert schedule.last_run_at == due + timedelta(seconds=2)
    [firing] = ScheduleFiring.objects.filter(schedule=schedule)
    assert (firing.scheduled_for, firing.outcome, firing.execution) == (due, "started", execution)


def test_a_missed_hour_fires_once_for_the_last_window_not_sixty_times(alice):
    schedule = every_minute(alice)
    due = schedule.next_run_at
    later = due + timedelta(hours=1, seconds=30)  # every worker was down for an hour

    assert schedules_fire_due(now=later) == 1
    assert schedules_fire_due(now=later + timedelta(seconds=5)) == 0

    assert len(executions_of(schedule)) == 1
    [firing] = ScheduleFiring.objects.filter(schedule=schedule)
    assert firing.scheduled_for == due + timedelta(hours=1)  # the latest window that passed
    schedule.refresh_from_db()
    assert schedule.next_run_at == due + timedelta(hours=1, minutes=1)


def test_a_clock_jump_back_fires_nothing_twice(alice):
    schedule = every_minute(alice)
    due = schedule.next_run_at
    schedules_fire_due(now=due + timedelta(seconds=1))
    assert schedules_fire_due(now=due - timedelta(minutes=5)) == 0
    assert len(executions_of(schedule)) == 1


def test_skip_overlap_records_a_skipped_firing_while_the_last_execution_is_active(alice):
    schedule = every_minute(alice)
    due = schedule.next_run_at
    schedules_fire_due(now=due)
    schedules_fire_due(now=due + timedelta(minutes=1))  # the first is still pending: skipped

    [first] = executions_of(schedule)
    outcomes = list(ScheduleFiring.objects.filter(schedule=schedule).order_by("scheduled_for")
                    .values_list("outcome", flat=True))
    assert outcomes == [FiringOutcome.STARTED, FiringOutcome.SKIPPED]

    finish(first)
    schedules_fire_due(now=due + timedelta(minutes=2))
    assert len(executions_of(schedule)) == 2


def test_queue_overlap_starts_the_waiting_firings_one_at_a_time_in_order(alice):
    schedule = every_minute(alice, overlap="queue")
    due = schedule.next_run_at
    for minute in range(3):
        schedules_fire_due(now=due + timedelta(minutes=minute))
    assert len(executions_of(schedule)) == 1
    assert ScheduleFiring.objects.filter(schedule=schedule, outcome="queued").count() == 2

    finish(executions_of(schedule)[0])
    schedules_fire_due(now=due + timedelta(minutes=2, seconds=10))  # no new window: the queue moves
    started = executions_of(schedule)
    assert len(started) == 2 and started[1].status == ExecutionStatus.PENDING
    second = ScheduleFiring.objects.get(execution=started[1])
    assert second.scheduled_for == due + timedelta(minutes=1)  # the older one first

    finish(started[1])
    schedules_fire_due(now=due + timedelta(minutes=2, seconds=20))
    assert len(executions_of(schedule)) == 3
    assert not ScheduleFiring.objects.filter(schedule=schedule, outcome="queued").exists()


def test_the_queue_is_bounded(alice):
    schedule = every_minute(alice, overlap="queue")
    due = schedule.next_run_at
    for minute in range(MAX_QUEUED + 3):
        schedules_fire_due(now=due + timedelta(minutes=minute))
    firings = ScheduleFiring.objects.filter(schedule=schedule)
    assert firings.filter(outcome="queued").count() == MAX_QUEUED
    assert firings.filter(outcome="skipped").count() == 2
    assert "queued already" in firings.filter(outcome="skipped").first().error


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(alice):
    schedule = every_minute(alice)
    schedule_set_enabled(schedule=schedule, enabled=False)
    assert schedules_fire_due(now=timezone.now() + timedelta(hours=1)) == 0
    schedule_set_enabled(schedule=schedule, enabled=True)
    assert schedule.next_run_at > timezone.now()
    assert not executions_of(schedule)


def test_a_firing_whose_target_went_away_is_recorded_failed_and_the_schedule_moves_on(alice):
    schedule = every_minute(alice)
    due = schedule.next_run_at
    Schedule.objects.filter(pk=schedule.pk).update(target_id="gone")

    assert schedules_fire_due(now=due) == 1

    firing = ScheduleFiring.objects.get(schedule=schedule)
    assert firing.outcome == "failed" and "No agent named 'gone'" in firing.error
    schedule.refresh_from_db()
    assert schedule.next_run_at == due + timedelta(minutes=1)
    assert not Execution.objects.exists()


def test_a_firing_gets_the_schedules_webhook_and_config(alice, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    schedule = every_minute(alice, config={"max_attempts": 2}, webhook="http://127.0.0.1:9/hook")
    schedules_fire_due(now=schedule.next_run_at)
    [execution] = executions_of(schedule)
    assert execution.webhook == "http://127.0.0.1:9/hook" and execution.config["max_attempts"] == 2


def test_a_schedule_fires_in_its_own_time_zone(alice):
    schedule = schedule_create(
        owner=alice, type="agent", target_id="echo", cron="30 8 * * *", timezone_name="Asia/Kolkata"
    )
    assert (schedule.next_run_at.hour, schedule.next_run_at.minute) == (3, 0)  # 08:30 IST in UTC
    schedule_update(schedule=schedule, changes={"timezone": "UTC"})
    assert (schedule.next_run_at.hour, schedule.next_run_at.minute) == (8, 30)


# --- several sweepers at once -------------------------------------------------------------------

SWEEPER = """
import sys, time
from datetime import datetime, timedelta
import django
django.setup()
from schedules.firing import schedules_fire_due
start, base, windows = float(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
fired = 0
for window in range(windows):
    for _ in range(3):  # each process sweeps every window several times, as workers do
        fired += schedules_fire_due(now=base + timedelta(minutes=window, seconds=1))
print(fired)
"""


def test_two_processes_sweeping_the_same_clock_fire_each_window_exactly_once(
    transactional_db, alice
):
    """Two real processes (two clusters' sweepers) race over the same due schedules and the
    same moved clock: every (schedule, window) is recorded once and starts at most one run."""
    schedules = [every_minute(alice, inputs={"n": n}, overlap="queue" if n % 2 else "skip")
                 for n in range(12)]
    base = min(s.next_run_at for s in schedules)
    windows = 3
    start = time.time() + 3  # both are set up by then; they begin within a millisecond or so
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SWEEPER, str(start), base.isoformat(), str(windows)],
            cwd=ROOT, env=subprocess_env(EXECUTIONS_SWEEP_INTERVAL="0"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs

    fired = [int(out.strip()) for out, _ in outputs]
    assert sum(fired) == len(schedules) * windows, fired  # each window fired by one of the two
    for schedule in schedules:
        firings = ScheduleFiring.objects.filter(schedule=schedule)
        assert sorted(firings.values_list("scheduled_for", flat=True)) == [
            base + timedelta(minutes=window) for window in range(windows)
        ]
        assert len(executions_of(schedule)) == 1  # nothing ended, so the rest skipped or queued
        schedule.refresh_from_db()
        assert schedule.next_run_at == base + timedelta(minutes=windows)




def test_old_firing_records_are_pruned_but_queued_ones_and_executions_stay(alice):
    schedule = every_minute(alice, overlap="queue")
    due = schedule.next_run_at
    for minute in range(3):  # started, queued, queued
        schedules_fire_due(now=due + timedelta(minutes=minute))
    [execution] = executions_of(schedule)
    ScheduleFiring.objects.update(fired_at=timezone.now() - timedelta(days=40))
    recent = schedule_trigger(schedule=schedule)  # a manual firing, recorded now

    assert firings_prune(older_than=timezone.now() - timedelta(days=30)) == 1

    left = ScheduleFiring.objects.filter(schedule=schedule)
    assert sorted(left.values_list("outcome", flat=True)) == ["queued", "queued", "started"]
    assert left.get(outcome="started").execution == recent
    assert set(executions_of(schedule)) == {execution, recent}
