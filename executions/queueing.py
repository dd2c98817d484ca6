"""Hand execution ids to the django-q2 broker. The queue carries the id and nothing else."""

from __future__ import annotations

import logging
import math

from django.db import router, transaction
from django_q.tasks import async_task

from executions.models import Execution
from project.shared_broker import forget_broker, queue_shares_database, shared_broker

logger = logging.getLogger(__name__)

def _task_options(execution: Execution) -> dict:
    options = {}
    timeout = (execution.config or {}).get("timeout") if isinstance(execution.config, dict) else None
    if timeout:
        options["timeout"] = math.ceil(timeout)  # django-q2 arms SIGALRM, whole seconds
    return options


def _async_task(execution: Execution) -> None:
    async_task(
        "executions.tasks.run_execution",
        str(execution.pk),
        broker=shared_broker(),
        task_name=f"execution-{execution.pk}",
        **_task_options(execution),
    )


def enqueue_execution(execution: Execution) -> None:
    """Queue ``execution`` for a worker, outside any transaction (after commit), so a worker
    always finds the row.

    A broker failure is logged, not raised: the row is committed and stays ``pending``, which is
    what the recovery sweep re-enqueues.
    """
    try:
        _async_task(execution)
    except Exception:
        forget_broker()
        logger.exception("could not enqueue execution %s; it stays pending", execution.pk)


def enqueue_execution_on_commit(execution: Execution) -> None:
    """Queue ``execution`` as part of the current transaction: it reaches workers when, and only
    when, the transaction commits.

    The design's rule is ``on_commit``; with the ORM broker on the execution's own database we
    depart from it on purpose and insert the queue row inside the transaction. Workers still
    cannot see the message before the row (both commit together), a rollback drops both, and a
    crash between commit and enqueue can no longer strand a pending row. It is also cheaper:
    the queue row shares the execution's commit (django-q2's own ORM broker, outside a
    transaction, even closed the request's connection to open a new one for its INSERT; ours,
    ``project.orm_broker``, no longer does). The pushers' wake-up is sent on commit by the broker
    itself. A failure here fails the transaction instead of being logged: the database that
    could not take the queue row would not have committed the execution either. Redis (or a
    queue on another database) keeps ``on_commit``.
    """
    if transaction.get_autocommit(router.db_for_write(type(execution))):
        enqueue_execution(execution)
    elif queue_shares_database(type(execution)):
        _async_task(execution)
    else:
        transaction.on_commit(lambda: enqueue_execution(execution))


def broker_queue_size() -> int:
    """Messages waiting in the broker (not counting those a cluster has already prefetched)."""
    try:
        return shared_broker().queue_size() or 0
    except Exception:
        forget_broker()
        raise
