"""Recovery of runs from their rows, run by every worker's sweeper (``executions.recovery``).

- A ``running`` run whose heartbeat is older than ``RUNS_HEARTBEAT_TIMEOUT`` lost its worker, as
  did one whose worker process its cluster saw die (``runs_reap_worker``, at once). A graph run
  is not retried on its own (it would apply its input to the thread a second time), so it ends
  ``error`` with a message naming the lost worker; its thread is refreshed and its next pending
  run dispatched, so the thread accepts new runs at once.
- Pending runs whose messages were lost (broker down, Redis restarted) are dispatched again once
  they are older than ``EXECUTIONS_REQUEUE_AFTER`` and the broker queue is empty; the claim is a
  conditional UPDATE, so a duplicate message never runs a graph twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from executions.queueing import broker_queue_size
from runs import dispatch
from runs.completion import run_ended_notify
from runs.models import Run, RunStatus
from runs.services.threads import thread_refresh_status
from runs.statements import events_insert
from runs.tasks import Outcome, final_events
from runs.transitions import run_reap


def runs_reap_stale(*, heartbeat_timeout: float | None = None) -> int:
    timeout = heartbeat_timeout if heartbeat_timeout is not None else settings.RUNS_HEARTBEAT_TIMEOUT
    cutoff = timezone.now() - timedelta(seconds=timeout)
    return _reap(
        Run.objects.stale(before=cutoff), still_lost=Q(heartbeat_at__lt=cutoff),
        cause=lambda run: (
            f"stopped beating its heartbeat (last at {run.heartbeat_at and run.heartbeat_at.isoformat()})"
        ),
    )


def runs_reap_worker(*, worker: str, claimed_before: datetime, cause: str) -> int:
    """End the running runs of ``worker`` (host:pid), a process known to have died, that it
    claimed before ``claimed_before`` (registered with ``executions.recovery.register_worker_reap``)."""
    held = Q(worker=worker, started_at__lte=claimed_before)
    return _reap(Run.objects.filter(held, status=RunStatus.RUNNING), still_lost=held, cause=lambda run: cause)


def _reap(lost: QuerySet, *, still_lost: Q, cause: Callable[[Run], str]) -> int:
    reaped = 0
    for run in lost.only("run_id", "thread_id", "worker", "attempts", "heartbeat_at"):
        error = {
            "error": "WorkerLost",
            "message": f"The worker {run.worker or '(unknown)'} running this run {cause(run)}.",
        }
        now = timezone.now()
        with transaction.atomic():
            # The claim read here, and only it: its worker finds its own writes refused after.
            if not run_reap(
                run_id=run.pk, thread_id=run.thread_id, worker=run.worker, attempt=run.attempts,
                where=still_lost, error=error, now=now,
            ):
                continue
            # Its streams end like any failed run's: an error event, then the thread's run_done.
            with connection.cursor() as cursor:
                events_insert(
                    cursor,
                    final_events(run.pk, Outcome(RunStatus.ERROR, result={"__error__": error}, error=error)),
                )
            thread_refresh_status(thread_id=run.thread_id)
            run_ended_notify(run_id=run.pk)
            transaction.on_commit(partial(dispatch.thread_dispatch_next, run.thread_id))
        reaped += 1
    return reaped


def runs_redispatch_stranded(*, older_than: float | None = None) -> int:
    age = older_than if older_than is not None else settings.EXECUTIONS_REQUEUE_AFTER
    cutoff = timezone.now() - timedelta(seconds=age)
    if not Run.objects.filter(status=RunStatus.PENDING, updated_at__lt=cutoff).exists():
        return 0
    if broker_queue_size() > 0:
        return 0
    return dispatch.runs_dispatch_pending()


def sweep() -> None:
    runs_reap_stale()
    runs_redispatch_stranded()
