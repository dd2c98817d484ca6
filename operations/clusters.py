"""The worker clusters alive now, as their sentinels last described themselves.

Each cluster's sentinel saves django-q2's ``Stat`` (host, pids, status) every half second with
a 3 s expiry, to Redis or, without Redis, to the file cache named by ``Q_CLUSTER["cache"]``.
A cluster missing from the list stopped or lost its machine; one listed with no worker
processes cannot take a job either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from django_q.conf import Conf
from django_q.status import Stat

from project.shared_broker import shared_broker

# Statuses of a cluster that takes jobs (STARTING, STOPPING and STOPPED do not).
TAKING_JOBS = frozenset({Conf.IDLE, Conf.WORKING})


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    host: str
    pid: int
    status: str
    workers: tuple[int, ...]
    saved_at: datetime
    started_at: datetime | None

    @property
    def takes_jobs(self) -> bool:
        return self.status in TAKING_JOBS and bool(self.workers)

    @property
    def age_seconds(self) -> float:
        return max(0.0, (timezone.now() - self.saved_at).total_seconds())


def clusters_alive() -> list[ClusterStatus]:
    """Every cluster whose status has not expired, busiest host first then by pid."""
    clusters = []
    for stat in Stat.get_all(broker=shared_broker()):
        clusters.append(
            ClusterStatus(
                name=str(getattr(stat, "cluster_id", "")),
                host=str(stat.host),
                pid=int(stat.pid or 0),
                status=str(stat.status),
                workers=tuple(int(pid) for pid in stat.workers),
                saved_at=stat.timestamp,
                started_at=stat.tob,
            )
        )
    return sorted(clusters, key=lambda c: (c.host, c.pid))


def worker_processes_alive(clusters: list[ClusterStatus]) -> int:
    return sum(len(cluster.workers) for cluster in clusters if cluster.takes_jobs)
