"""Schedules fired by real clusters over real minutes (slow: about four minutes)."""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from schedules.models import FiringOutcome, Schedule, ScheduleFiring
from schedules.services import schedule_create
from tests.conftest import Cluster, figure, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.live, pytest.mark.django_db(transaction=True)]

SCHEDULES = 10
WINDOWS = 3


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def test_two_clusters_and_a_one_minute_cron_make_exactly_one_execution_a_minute(alice):
    clusters = [Cluster(workers=2), Cluster(workers=2)]
    try:
        time.sleep(3)  # both clusters' workers are up and sweeping
        schedules = [
            schedule_create(owner=alice, type="agent", target_id="echo", cron="* * * * *",
                            inputs={"n": n})
            for n in range(SCHEDULES)
        ]
        first = min(schedule.next_run_at for schedule in schedules)
        last = first + timedelta(minutes=WINDOWS - 1)
        remaining = (last - timezone.now()).total_seconds()
        wait_for(
            lambda: ScheduleFiring.objects.filter(scheduled_for=last).count() == SCHEDULES,
            timeout=remaining + 30, interval=0.5,
            message=lambda: f"{WINDOWS} firings of each schedule; log: {clusters[0].log()[-2000:]}",
        )
        wait_for(
            lambda: not Execution.objects.active().exists(), timeout=30, interval=0.2,
            message="the scheduled executions to end",
        )
        # Paused before the fourth window, so that stopping the clusters races nothing.
        Schedule.objects.update(enabled=False, next_run_at=None)
    finally:
        for cluster in clusters:
            cluster.stop()

    for schedule in schedules:
        executions = Execution.objects.filter(schedule=schedule)
        assert executions.count() == WINDOWS, list(executions.values("created_at", "status"))
        assert set(executions.values_list("status", flat=True)) == {ExecutionStatus.COMPLETED}
        fire_times = sorted(
            ScheduleFiring.objects.filter(schedule=schedule).values_list("scheduled_for", flat=True)
        )
        assert fire_times == [first + timedelta(minutes=window) for window in range(WINDOWS)]

    firings = ScheduleFiring.objects.filter(outcome=FiringOutcome.STARTED).select_related("execution")
    created = [(f.execution.created_at - f.scheduled_for).total_seconds() for f in firings]
    started = [(f.execution.started_at - f.scheduled_for).total_seconds() for f in firings]
    figure(
        f"schedule firing lateness, 2 clusters x 2 workers, {len(created)} firings: execution "
        f"created p50 {statistics.median(created):.2f} s, p95 {percentile(created, 0.95):.2f} s, "
        f"max {max(created):.2f} s after the minute; started p50 {statistics.median(started):.2f} s, "
        f"p95 {percentile(started, 0.95):.2f} s"
    )
