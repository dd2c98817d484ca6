"""Recovery from the database row: jobs whose worker died, and jobs whose queue message was lost.

django-q2 alone loses a job whose worker is killed on the Redis broker, and re-runs it forever
without counting on the ORM broker. Here the row decides:

- A ``running`` row whose heartbeat is older than ``EXECUTIONS_HEARTBEAT_TIMEOUT`` lost its
  worker. It goes back to ``pending`` (and the queue) if it has attempts left, else ``failed``
  with ``error.type`` = ``worker_lost`` naming the worker. Attempts are counted at claim time, so
  a job that kills its worker every time ends failed after ``EXECUTIONS_MAX_ATTEMPTS`` tries.
- A ``pending`` row older than ``EXECUTIONS_REQUEUE_AFTER`` while the broker's queue is empty was
  never enqueued or its message was lost (broker down, Redis restarted): it is enqueued again.
  A duplicate message is harmless: the claim is a conditional UPDATE.

Every worker process runs a sweeper thread (started on django-q2's ``post_spawn``) that does
this every ``EXECUTIONS_SWEEP_INTERVAL`` seconds; several sweepers are safe for the same reason.
Other apps add their own sweeps with ``register_sweep``.

A worker that dies does not wait for the heartbeat timeout: its cluster's sentinel, its parent,
sees it exit and calls ``worker_jobs_reap`` (``executions.cluster``), which requeues or fails its
executions the same way, and reaps the jobs of other apps through ``register_worker_reap``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from executions.completion import execution_ended_notify
from executions.dependencies import dependents_settle_missed
from executions.models import Execution, ExecutionEventType, ExecutionStatus
from executions.queueing import broker_queue_size, enqueue_execution
from executions.transitions import execution_transition

logger = logging.getLogger(__name__)

_sweeps: list[Callable[[], object]] = []
_worker_reaps: list[Callable[..., object]] = []


def register_sweep(sweep: Callable[[], object]) -> None:
    """Have every worker's sweeper call ``sweep()`` each interval (it must be idempotent)."""
    if sweep not in _sweeps:
        _sweeps.append(sweep)


def register_worker_reap(reap: Callable[..., object]) -> None:
    """Have ``worker_jobs_reap`` call ``reap(worker=…, claimed_before=…, cause=…)`` too (it must be
    idempotent: a reap that failed is tried again)."""
    if reap not in _worker_reaps:
        _worker_reaps.append(reap)


def max_attempts(execution: Execution) -> int:
    configured = execution.config.get("max_attempts") if isinstance(execution.config, dict) else None
    if isinstance(configured, int) and configured >= 1:
        return configured
    return settings.EXECUTIONS_MAX_ATTEMPTS


def executions_reap_stale(*, heartbeat_timeout: float | None = None) -> dict[str, int]:
    """Finish or requeue running executions whose worker stopped beating its heartbeat."""
    timeout = heartbeat_timeout if heartbeat_timeout is not None else settings.EXECUTIONS_HEARTBEAT_TIMEOUT
    cutoff = timezone.now() - timedelta(seconds=timeout)
    # Conditional on the heartbeat still being old: a worker that beats meanwhile keeps its job.
    return _reap(
        Execution.objects.stale(before=cutoff), still_lost=Q(heartbeat_at__lt=cutoff),
        cause=lambda execution: (
            f"stopped beating its heartbeat (last at {execution.heartbeat_at and execution.heartbeat_at.isoformat()})"
        ),
    )


def executions_reap_worker(*, worker: str, claimed_before: datetime, cause: str) -> dict[str, int]:
    """Finish or requeue the running executions of ``worker`` (host:pid), a process known to have
    died (``cause`` says how), that it claimed before ``claimed_before``: a later claim under the
    same name is a new process that was given the dead one's pid."""
    held = Q(worker=worker, started_at__lte=claimed_before)
    return _reap(Execution.objects.filter(held, status=ExecutionStatus.RUNNING), still_lost=held,
                 cause=lambda execution: cause)


def _reap(lost: QuerySet, *, still_lost: Q, cause: Callable[[Execution], str]) -> dict[str, int]:
    requeued = failed = 0
    for execution in lost.only(
        "id", "config", "attempts", "worker", "heartbeat_at", "type", "target_id", "webhook"
    ):
        # Conditional on the row still being lost and on the claim being the one read here:
        # recovery reaps that attempt, never a newer claim of the row. Its worker, if it wakes
        # up, finds its own writes refused.
        still_stale = still_lost & Q(worker=execution.worker, attempts=execution.attempts)
        if execution.attempts < max_attempts(execution):
            won = _transition_if(
                execution, still_stale,
                event_data={
                    "status": ExecutionStatus.PENDING, "reason": "worker_lost",
                    "worker": execution.worker, "attempt": execution.attempts,
                },
                status=ExecutionStatus.PENDING, heartbeat_at=None, worker="",
            )
            if won:
                requeued += 1
                enqueue_execution(execution)
        else:
            message = (
                f"The worker {execution.worker or '(unknown)'} {cause(execution)} after {execution.attempts} "
                f"attempt{'s' if execution.attempts != 1 else ''}."
            )
            error = {"type": "worker_lost", "message": message, "details": {"worker": execution.worker}}
            won = _transition_if(
                execution, still_stale,
                event_data={
                    "status": ExecutionStatus.FAILED, "error": error, "attempt": execution.attempts
                },
                status=ExecutionStatus.FAILED, error=error, completed_at=timezone.now(), heartbeat_at=None,
            )
            failed += won
            if won and execution.webhook:
                execution_ended_notify(execution_id=execution.pk)
    return {"requeued": requeued, "failed": failed}


def worker_jobs_reap(*, worker: str, claimed_before: datetime, cause: str) -> None:
    """Every job the dead worker process ``worker`` (host:pid) held: its executions, and those of
    the apps that registered a reap. Called by the worker's cluster when it sees it exit."""
    executions_reap_worker(worker=worker, claimed_before=claimed_before, cause=cause)
    for reap in _worker_reaps:
        reap(worker=worker, claimed_before=claimed_before, cause=cause)


def _transition_if(execution: Execution, where: Q, *, event_data: dict, **fields) -> bool:
    return execution_transition(
        execution_id=execution.pk,
        allowed=[ExecutionStatus.RUNNING],
        where=where,
        event_type=ExecutionEventType.STATUS,
        event_data=event_data,
        **fields,
    )


def executions_requeue_stranded(*, older_than: float | None = None) -> int:
    """Enqueue again pending executions the broker does not seem to hold."""
    age = older_than if older_than is not None else settings.EXECUTIONS_REQUEUE_AFTER
    cutoff = timezone.now() - timedelta(seconds=age)
    stranded = Execution.objects.annotate(last_enqueued=Coalesce("requeued_at", "created_at")).filter(
        Q(not_before__isnull=True) | Q(not_before__lte=timezone.now()),
        status=ExecutionStatus.PENDING,
        blocked=False,  # waits for a dependency: it holds no message until then
        last_enqueued__lt=cutoff,
    )
    if not stranded.exists():
        return 0
    # While the queue still holds messages the old rows are probably just waiting their turn.
    if broker_queue_size() > 0:
        return 0
    count = 0
    for execution in stranded.only("id", "type", "target_id", "config")[:1000]:
        updated = Execution.objects.filter(
            Q(requeued_at__lt=cutoff) | Q(requeued_at__isnull=True),
            pk=execution.pk, status=ExecutionStatus.PENDING,
        ).update(requeued_at=timezone.now())
        if updated:
            enqueue_execution(execution)
            count += 1
    return count


def executions_enqueue_due_retries() -> int:
    """Enqueue the executions whose retry backoff has passed."""
    now = timezone.now()
    count = 0
    for execution in Execution.objects.filter(status=ExecutionStatus.PENDING, not_before__lte=now).only(
        "id", "type", "target_id", "config"
    )[:1000]:
        updated = Execution.objects.filter(
            pk=execution.pk, status=ExecutionStatus.PENDING, not_before__lte=now
        ).update(not_before=None, requeued_at=now)
        if updated:
            enqueue_execution(execution)
            count += 1
    return count


def sweep_once() -> None:
    sweeps: list[Callable[[], object]] = [
        executions_reap_stale, executions_enqueue_due_retries, executions_requeue_stranded,
        dependents_settle_missed, *_sweeps,
    ]
    for sweep in sweeps:
        try:
            sweep()
        except Exception:  # one failing sweep (e.g. database restarting) must not stop the others
            logger.warning("recovery sweep %s failed", getattr(sweep, "__name__", sweep), exc_info=True)
            connection.close()


class Sweeper(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="executions-sweeper", daemon=True)
        self._interval = interval

    def run(self) -> None:
        # Jitter, so the sweepers of a cluster's workers do not all query at the same instant.
        wait = threading.Event().wait
        wait(random.uniform(0, self._interval))
        while True:
            sweep_once()
            wait(self._interval * random.uniform(0.8, 1.2))


_sweeper: Sweeper | None = None


def start_sweeper(**_signal_kwargs) -> None:
    """Connected to django-q2's ``post_spawn``: runs in each freshly forked worker process."""
    global _sweeper
    if settings.EXECUTIONS_SWEEP_INTERVAL <= 0:
        return
    if _sweeper is None or not _sweeper.is_alive():
        _sweeper = Sweeper(settings.EXECUTIONS_SWEEP_INTERVAL)
        _sweeper.start()
