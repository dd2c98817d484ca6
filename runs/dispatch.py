"""Per-thread FIFO dispatch: hand run ids to the broker so each thread runs one graph at a time.

A run is enqueued when it is created (after commit) and again, as the oldest due pending run of
its thread, when the thread's running run ends. The worker's claim is what enforces the order
and the one-running-run rule (a conditional UPDATE that skips runs with older pending siblings,
backed by the partial unique index), so enqueueing a run twice is harmless and enqueueing one
too early only makes its worker give up until the next dispatch.
"""

from __future__ import annotations

import logging
from uuid import UUID

from django.db import router, transaction
from django.utils import timezone
from django_q.brokers import Broker
from django_q.tasks import async_task

from project.shared_broker import forget_broker, queue_shares_database, shared_broker
from runs.models import Run, RunStatus

logger = logging.getLogger(__name__)

def _async_task(run_id: UUID | str, broker: Broker) -> None:
    # The function itself, not its dotted path: a worker then unpickles a reference instead of
    # locating the path module by module (pydoc.locate) for every run. Imported here because
    # runs.tasks imports this module.
    from runs.tasks import run_execute

    async_task(run_execute, str(run_id), broker=broker, task_name=f"run-{run_id}", group="runs")


def run_enqueue(run_id: UUID | str) -> None:
    """Queue ``run_id`` for a worker now. A broker failure leaves the run pending, to be found by
    the next dispatch of its thread (or a recovery sweep), so it is logged rather than raised."""
    try:
        _async_task(run_id, shared_broker())
    except Exception:
        forget_broker()
        logger.exception("could not enqueue run %s; it stays pending", run_id)


class _PackageTaker:
    """Stands in for the broker in ``async_task``: keeps the signed package it would enqueue."""

    list_key = "prepared"
    package: str | None = None

    def enqueue(self, package: str) -> int:
        self.package = package
        return 0


def run_task_package(run_id: UUID | str) -> str | None:
    """The queue message of ``run_id``, built (pickled and signed by django-q2's ``async_task``)
    ahead of the transaction that will insert it; None where the message is not inserted in a
    transaction (Redis: sent after the commit, built then)."""
    if not queue_shares_database(Run):
        return None
    taker = _PackageTaker()
    _async_task(run_id, taker)
    return taker.package


def run_enqueue_on_commit(run_id: UUID | str, *, package: str | None = None) -> None:
    """Queue ``run_id`` so that it reaches workers when, and only when, the current transaction
    commits.

    With the ORM broker on the runs' own database the queue row is inserted inside the
    transaction, as ``executions.queueing`` does and for the same reasons: both rows commit
    together (a worker cannot see the message before the run, a rollback drops both), and it
    saves the queue INSERT a commit of its own (``project.orm_broker`` wakes the pushers once the
    transaction commits). A broker failure then fails the create instead of leaving a pending run: the
    database that could not take the queue row would not have taken the run either. Redis keeps
    ``on_commit``. ``package``: the message from ``run_task_package``, built ahead."""
    if transaction.get_autocommit(router.db_for_write(Run)):
        run_enqueue(run_id)
    elif queue_shares_database(Run):
        if package is None:
            _async_task(run_id, shared_broker())
        else:
            shared_broker().enqueue(package)
    else:
        transaction.on_commit(lambda: run_enqueue(run_id))


def thread_next_pending_run(thread_id: UUID | str) -> UUID | None:
    """The run a thread should start next: its oldest pending run that is due."""
    return (
        Run.objects.filter(
            thread_id=thread_id, status=RunStatus.PENDING, created_at__lte=timezone.now()
        )
        .order_by("created_at", "run_id")
        .values_list("run_id", flat=True)
        .first()
    )


def thread_dispatch_next(thread_id: UUID | str) -> UUID | None:
    """Enqueue the thread's next pending run, if any, unless one of its runs is running."""
    if Run.objects.filter(thread_id=thread_id, status=RunStatus.RUNNING).exists():
        return None
    run_id = thread_next_pending_run(thread_id)
    if run_id is not None:
        run_enqueue(run_id)
    return run_id


def runs_dispatch_pending() -> int:
    """Enqueue the next run of every thread that has due pending runs and nothing running.

    For recovery after a lost broker message or a restart; returns how many runs were queued.
    """
    thread_ids = (
        Run.objects.filter(status=RunStatus.PENDING, created_at__lte=timezone.now())
        .values_list("thread_id", flat=True)
        .distinct()
    )
    return sum(1 for thread_id in list(thread_ids) if thread_dispatch_next(thread_id))
