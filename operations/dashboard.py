"""What the operations page (the admin index) shows, each part one aggregate query that an index
serves: the last hour's jobs per minute by status, the queue, the last day per target/graph, the
workers and what each one runs, and warnings when the platform looks stalled.

Counts filter on ``status IN (…every status…)`` and a ``created_at`` range, so PostgreSQL and
SQLite both read them from the ``(status, created_at)`` index of each table rather than scanning
a million rows; durations (p50/p95) come from the last day's finished rows (at most
``DURATION_SAMPLE`` per kind), each row's duration computed by the database.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, FloatField, Func
from django.db.models.functions import TruncMinute
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from operations.clusters import ClusterStatus
from operations.live import Live, live_state
from runs.models import Run, RunStatus

HOUR_MINUTES = 60
DAY = timedelta(hours=24)
DURATION_SAMPLE = 50_000
# A due pending job this old while workers are alive means the queue is not moving.
STALLED_QUEUE_SECONDS = 60.0

FAILED: dict[str, set[str]] = {
    "execution": {ExecutionStatus.FAILED}, "run": {RunStatus.ERROR, RunStatus.TIMEOUT}
}


@dataclass(frozen=True)
class PerMinute:
    """Jobs created in each of the last 60 minutes, oldest first, by their status now."""

    kind: str
    minutes: list[datetime]
    counts: list[dict[str, int]]
    statuses: list[str]

    @property
    def total(self) -> int:
        return sum(sum(minute.values()) for minute in self.counts)


@dataclass(frozen=True)
class TargetDay:
    kind: str
    target: str
    finished: int
    failed: int
    p50: float | None
    p95: float | None

    @property
    def failure_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0


@dataclass(frozen=True)
class RunningJob:
    kind: str
    job_id: str
    target: str
    started_at: datetime | None
    heartbeat_at: datetime | None


@dataclass
class Worker:
    host: str
    pid: int
    cluster: ClusterStatus
    jobs: list[RunningJob] = field(default_factory=list)

    @property
    def last_heartbeat(self) -> datetime | None:
        beats = [job.heartbeat_at for job in self.jobs if job.heartbeat_at]
        return max(beats) if beats else None


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    live: Live
    per_minute: list[PerMinute]
    targets: list[TargetDay]
    workers: list[Worker]
    unplaced: list[RunningJob]  # running on no worker alive now: the reaper's, soon
    warnings: list[str]


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index]


def _per_minute(kind: str, model: type[Execution] | type[Run], statuses: list[str], now: datetime) -> PerMinute:
    start = (now - timedelta(minutes=HOUR_MINUTES - 1)).replace(second=0, microsecond=0)
    rows = (
        model.objects.filter(status__in=statuses, created_at__gte=start, created_at__lte=now)
        .annotate(minute=TruncMinute("created_at"))
        .values("minute", "status")
        .annotate(n=Count("status"))
        .order_by()
    )
    minutes = [start + timedelta(minutes=n) for n in range(HOUR_MINUTES)]
    counts: list[dict[str, int]] = [{} for _ in minutes]
    for row in rows:
        index = int((row["minute"] - start).total_seconds() // 60)
        if 0 <= index < HOUR_MINUTES:
            counts[index][row["status"]] = counts[index].get(row["status"], 0) + row["n"]
    return PerMinute(kind=kind, minutes=minutes, counts=counts, statuses=statuses)


class SecondsBetween(Func):
    """``end - start`` in seconds, computed by the database: reading two datetimes per row into
    Python cost most of the page's time on a day of 10,000 jobs."""

    output_field = FloatField()
    arg_joiner = ") - julianday("
    template = "((julianday(%(expressions)s)) * 86400.0)"

    def __init__(self, end: str, start: str) -> None:
        super().__init__(F(end), F(start))

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="EXTRACT(EPOCH FROM (%(expressions)s))", arg_joiner=" - ", **extra
        )


def _last_day(now: datetime) -> list[TargetDay]:
    since = now - DAY
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    finished: dict[tuple[str, str], int] = defaultdict(int)
    failed: dict[tuple[str, str], int] = defaultdict(int)
    executions = (
        Execution.objects.filter(status__in=ExecutionStatus.terminal(), created_at__gte=since)
        .annotate(seconds=SecondsBetween("completed_at", "started_at"))
        .order_by()  # the model's ordering would sort the day's rows for nothing
        .values_list("target_id", "status", "seconds")[:DURATION_SAMPLE]
    )
    runs = (
        Run.objects.filter(status__in=RunStatus.terminal(), created_at__gte=since)
        .annotate(seconds=SecondsBetween("ended_at", "started_at"))
        .order_by()
        .values_list("assistant__graph_id", "status", "seconds")[:DURATION_SAMPLE]
    )
    for kind, rows in (("execution", executions), ("run", runs)):
        for target, status, seconds in rows:
            key = (kind, target)
            finished[key] += 1
            if status in FAILED[kind]:
                failed[key] += 1
            if seconds is not None:
                durations[key].append(seconds)
    days = []
    for key in sorted(finished):
        values = sorted(durations[key])
        days.append(TargetDay(
            kind=key[0], target=key[1], finished=finished[key], failed=failed[key],
            p50=_percentile(values, 0.5), p95=_percentile(values, 0.95),
        ))
    return days


def _running() -> dict[str, list[RunningJob]]:
    """Running jobs by the worker (``host:pid``) that claimed them."""
    by_worker: dict[str, list[RunningJob]] = defaultdict(list)
    for job_id, target, worker, started_at, heartbeat_at in Execution.objects.filter(
        status=ExecutionStatus.RUNNING
    ).order_by().values_list("id", "target_id", "worker", "started_at", "heartbeat_at"):
        by_worker[worker].append(RunningJob("execution", str(job_id), target, started_at, heartbeat_at))
    for job_id, target, worker, started_at, heartbeat_at in Run.objects.filter(
        status=RunStatus.RUNNING
    ).order_by().values_list("run_id", "assistant__graph_id", "worker", "started_at", "heartbeat_at"):
        by_worker[worker].append(RunningJob("run", str(job_id), target, started_at, heartbeat_at))
    return by_worker


def _warnings(live: Live, workers: list[Worker], unplaced: list[RunningJob], now: datetime) -> list[str]:
    warnings = []
    pending = live.executions.pending + live.runs.pending
    oldest = max(live.executions.oldest_pending_age_seconds, live.runs.oldest_pending_age_seconds)
    if not live.workers_alive:
        if pending:
            warnings.append(f"No worker is alive and {pending} jobs are pending: start `manage.py qcluster`.")
        else:
            warnings.append("No worker is alive: new jobs will wait until one starts.")
    elif oldest > STALLED_QUEUE_SECONDS:
        warnings.append(
            f"The oldest due pending job has waited {oldest:.0f} s while {live.workers_alive} workers "
            "are alive: the workers are all busy, or the cluster is stalled."
        )
    for cluster in live.clusters:
        if not cluster.takes_jobs:
            warnings.append(f"Cluster {cluster.host}:{cluster.pid} is {cluster.status.lower()} and takes no jobs.")
    stale_after = timedelta(seconds=float(settings.EXECUTIONS_HEARTBEAT_TIMEOUT))
    stale = [job for job in unplaced if job.heartbeat_at and now - job.heartbeat_at > stale_after]
    if stale:
        warnings.append(
            f"{len(stale)} running jobs lost their worker (no heartbeat for over "
            f"{stale_after.total_seconds():.0f} s): recovery will fail or requeue them."
        )
    return warnings


def dashboard() -> Dashboard:
    now = timezone.now()
    live = live_state()
    running = _running()
    workers = []
    for cluster in live.clusters:
        for pid in cluster.workers:
            name = f"{cluster.host}:{pid}"
            workers.append(Worker(host=cluster.host, pid=pid, cluster=cluster, jobs=running.pop(name, [])))
    unplaced = [job for jobs in running.values() for job in jobs]
    return Dashboard(
        now=now,
        live=live,
        per_minute=[
            _per_minute("execution", Execution, list(ExecutionStatus.values), now),
            _per_minute("run", Run, list(RunStatus.values), now),
        ],
        targets=_last_day(now),
        workers=workers,
        unplaced=unplaced,
        warnings=_warnings(live, workers, unplaced, now),
    )

