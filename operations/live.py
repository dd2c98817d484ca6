"""The platform's present state, read at the moment it is asked for: jobs waiting and running,
and the worker clusters alive. Shared by ``/metrics`` and the dashboard.

Each count reads only active rows through the ``(status, created_at)`` index of its table, so it
costs the same with a million finished jobs as with none.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Min, Q
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from operations.clusters import ClusterStatus, clusters_alive, worker_processes_alive
from runs.models import Run, RunStatus


@dataclass(frozen=True)
class Queue:
    pending: int
    running: int
    oldest_pending_age_seconds: float


@dataclass(frozen=True)
class Live:
    executions: Queue
    runs: Queue
    clusters: list[ClusterStatus]

    @property
    def workers_alive(self) -> int:
        return worker_processes_alive(self.clusters)


def _queue(model: type[Execution] | type[Run], pending: str, running: str) -> Queue:
    now = timezone.now()
    # A delayed run's created_at is when it is due: it is not waiting before then.
    due = Q(status=pending, created_at__lte=now)
    counts = model.objects.filter(status__in=[pending, running]).aggregate(
        # Counting status, not pk: the index holds it, so no table row is read.
        pending=Count("status", filter=Q(status=pending)),
        running=Count("status", filter=Q(status=running)),
        oldest=Min("created_at", filter=due),
    )
    oldest = counts["oldest"]
    return Queue(
        pending=counts["pending"],
        running=counts["running"],
        oldest_pending_age_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
    )


def live_state() -> Live:
    return Live(
        executions=_queue(Execution, ExecutionStatus.PENDING, ExecutionStatus.RUNNING),
        runs=_queue(Run, RunStatus.PENDING, RunStatus.RUNNING),
        clusters=clusters_alive(),
    )
