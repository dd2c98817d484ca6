"""What the platform reports about its own work: Prometheus counters and one log line per job
start and end.

Counters and histograms live in ``prometheus_client``'s multiprocess mode: every process (API,
worker, the cluster's reapers) writes its own memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (set by ``project.settings`` before this module is imported) and
``GET /metrics`` sums them. Gauges of the present (queue depth, running jobs, workers alive) are
not kept here: ``operations.metrics`` reads them from the database at scrape time, so no dead
process leaves a stale value behind.

``kind`` is ``execution`` or ``run``; ``target`` an execution's target id or a run's graph id.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

logger = logging.getLogger("agentjobs.jobs")

# From a no-op (milliseconds) to the default one-hour timeout. Few buckets and labels on purpose:
# every series is read from every process's file at each scrape (operations.metric_files).
DURATION_BUCKETS = (0.01, 0.05, 0.25, 1, 2.5, 10, 30, 60, 300, 900, 3600)

@dataclass(frozen=True)
class Instruments:
    jobs_created: Counter
    jobs_finished: Counter
    job_duration: Histogram
    webhook_deliveries: Counter
    http_requests: Counter
    http_duration: Histogram


@cache
def instruments() -> Instruments:
    """Built at the first count, not at import: prometheus_client costs about a tenth of a
    second to import, which every management command would pay. In no registry: ``/metrics``
    reads the processes' files, and two threads racing to the first count cannot register a
    name twice."""
    from prometheus_client import Counter, Histogram

    return Instruments(
        jobs_created=Counter(
            "agentjobs_jobs_created", "Jobs created through the APIs.", ["kind", "target"],
            registry=None,
        ),
        jobs_finished=Counter(
            "agentjobs_jobs_finished",
            "Attempts that ended in a worker, by how they ended (completed, failed, cancelled, "
            "retrying, timeout, error, interrupted, superseded, ...).",
            ["kind", "target", "status"],
            registry=None,
        ),
        job_duration=Histogram(
            "agentjobs_job_duration_seconds",
            "Seconds from a worker's claim to the attempt's end (any status).",
            ["kind", "target"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        webhook_deliveries=Counter(
            "agentjobs_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, retrying, failed).",
            ["outcome"],
            registry=None,
        ),
        http_requests=Counter(
            "agentjobs_http_requests",
            "HTTP requests answered, by route pattern, method and status code.",
            ["route", "method", "status"],
            registry=None,
        ),
        http_duration=Histogram(
            "agentjobs_http_request_duration_seconds",
            "Seconds to answer an HTTP request (to its first byte for a stream).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=None,
        ),
    )


def job_created(*, kind: str, target: str) -> None:
    instruments().jobs_created.labels(kind, target).inc()


@dataclass
class JobReport:
    """One worker attempt at a job, between its claim and its end; ``outcome`` is set by the
    code that ran it."""

    kind: str
    job_id: str
    target: str
    attempt: int
    outcome: str = ""
    started: float = field(default_factory=time.monotonic)

    def ended(self) -> None:
        seconds = time.monotonic() - self.started
        status = self.outcome or "unknown"
        metrics = instruments()
        metrics.jobs_finished.labels(self.kind, self.target, status).inc()
        metrics.job_duration.labels(self.kind, self.target).observe(seconds)
        logger.info(
            "%s %s %s: %s in %.3fs", self.kind, self.job_id, status, self.target, seconds,
            extra={"event": "job_ended", "kind": self.kind, "job_id": self.job_id,
                   "target": self.target, "attempt": self.attempt, "status": status,
                   "duration_s": round(seconds, 4), "pid": os.getpid()},
        )


# Attempts started in this process and not ended yet, for an end recorded in another function
# (or on the worker's event loop) than the claim: (kind, job id) -> report.
_started: dict[tuple[str, str], JobReport] = {}


def job_started(*, kind: str, job_id: Any, target: str, attempt: int) -> JobReport:
    """Log the start of a claimed job; ``job_ending`` (or the report's ``ended``) ends it."""
    report = JobReport(kind=kind, job_id=str(job_id), target=target, attempt=attempt)
    _started[(kind, report.job_id)] = report
    logger.info(
        "%s %s started: %s (attempt %d)", kind, report.job_id, target, attempt,
        extra={"event": "job_started", "kind": kind, "job_id": report.job_id, "target": target,
               "attempt": attempt, "pid": os.getpid()},
    )
    return report


@contextmanager
def job_ending(*, kind: str, job_id: Any, target: str = "") -> Iterator[JobReport]:
    """Around the code that records a job's end: its line and metrics once it returns. An
    exception that escapes (the task's timeout) counts as ``timeout`` unless an outcome was set."""
    report = _started.pop((kind, str(job_id)), None) or JobReport(
        kind=kind, job_id=str(job_id), target=target, attempt=0
    )
    try:
        yield report
    except BaseException:
        report.outcome = report.outcome or "timeout"
        raise
    finally:
        report.ended()


@contextmanager
def job_reported(*, kind: str, job_id: Any, target: str, attempt: int) -> Iterator[JobReport]:
    """``job_started`` then ``job_ending``, for a job run to its end in one call."""
    job_started(kind=kind, job_id=job_id, target=target, attempt=attempt)
    with job_ending(kind=kind, job_id=job_id, target=target) as report:
        yield report


def webhook_attempted(*, outcome: str) -> None:
    instruments().webhook_deliveries.labels(outcome).inc()


def http_answered(*, route: str, method: str, status: int, seconds: float) -> None:
    metrics = instruments()
    metrics.http_requests.labels(route, method, str(status)).inc()
    metrics.http_duration.labels(route).observe(seconds)


def multiprocess_files_clean(directory: Path, *, dead_only: bool) -> int:
    """Remove the metric files of earlier processes; returns how many. ``dead_only`` keeps those
    of processes still running (a test session beside a served instance); otherwise all go, as
    at a fresh start, where counters starting again from zero is what Prometheus expects."""
    removed = 0
    for path in directory.glob("*.db"):
        if dead_only:
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and _alive(int(pid)):
                continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
