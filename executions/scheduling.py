"""Which pending execution a worker takes next: priorities and concurrency limits.

A broker message is a wake-up, not an order to run the execution it names: the claim
(``execution_claim``) takes the first claimable execution in claiming order (priority, highest
first; the oldest first within a priority). Each execution sends one message, so there are as
many claims as executions; the one a message names only sets its timeout class (django-q2 armed
that execution's timeout on the message). Claimable means pending, due (a retry's backoff
passed), and of a target and an owner below their concurrency limits (``@agent(..., concurrency=N)``,
``EXECUTIONS_MAX_RUNNING_PER_USER``). So a high-priority execution created behind a thousand
queued ones starts with the next message any worker takes, and a cancelled row can never start:
the claim is a conditional UPDATE of a pending row.

Limits are exact. The claim skips the targets and owners already at their limit (one grouped
count of the running rows, only when limits exist). Two claims racing for the last slot are
settled after the UPDATE, in the claim's transaction: on PostgreSQL under an advisory lock per
target and per owner (taken in that order, so two claims never wait on each other in a cycle), on
SQLite by its single writer. The loser rolls back (its row stays pending) and claims another
execution. An execution waiting for a slot holds no message: the end of a limited execution
sends one for the next in line (``execution_slot_freed``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import Count
from django.utils import timezone

from executions import statements
from executions.models import Execution, ExecutionEventType, ExecutionStatus
from executions.registry import registry
from project.realtime.event_hub import channel_name, publish_on_commit

logger = logging.getLogger(__name__)

# Claims retried after losing the race for a target's or owner's last slot.
_CLAIM_TRIES = 3


class _OverLimit(Exception):
    def __init__(self, target: str | None, owner: int | None) -> None:
        self.target, self.owner = target, owner


def _as_uuid(value: UUID | str) -> UUID | None:
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        return None


def _saturated() -> tuple[list[str], list[int]]:
    """The targets and owners whose running executions already fill their limits."""
    limits = registry.concurrency_limits()
    per_user = settings.EXECUTIONS_MAX_RUNNING_PER_USER
    targets: list[str] = []
    owners: list[int] = []
    running = Execution.objects.filter(status=ExecutionStatus.RUNNING)
    if limits:
        counts = running.filter(target_id__in=list(limits)).values_list("target_id").annotate(
            n=Count("id")
        )
        targets = sorted(target for target, n in counts if n >= limits[target])
    if per_user:
        owners = sorted(
            running.filter(owner__isnull=False).values_list("owner_id").annotate(n=Count("id"))
            .filter(n__gte=per_user).values_list("owner_id", flat=True)
        )
    return targets, owners


def _check_limits(connection: Any, execution: Execution) -> None:
    """Raise ``_OverLimit`` if the claimed ``execution`` made its target or owner exceed a limit
    (it lost a race for the last slot); the caller's transaction then undoes the claim."""
    limit = registry.concurrency_limits().get(execution.target_id)
    per_user = settings.EXECUTIONS_MAX_RUNNING_PER_USER if execution.owner_id else 0
    if limit is None and not per_user:
        return
    running = Execution.objects.filter(status=ExecutionStatus.RUNNING)
    postgres = connection.vendor == "postgresql"
    if limit is not None:
        if postgres:
            _advisory_lock(connection, f"executions.target:{execution.target_id}")
        if running.filter(target_id=execution.target_id).count() > limit:
            raise _OverLimit(execution.target_id, None)
    if per_user:
        if postgres:
            _advisory_lock(connection, f"executions.owner:{execution.owner_id}")
        if running.filter(owner_id=execution.owner_id).count() > per_user:
            raise _OverLimit(None, execution.owner_id)


def _advisory_lock(connection: Any, key: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [key])


def _claim_once(
    connection: Any, alias: str, *, hint: UUID | None, worker: str,
    targets: Sequence[str], owners: Sequence[int],
) -> Execution | None:
    now = timezone.now()
    sql, params = statements.claim_sql(
        connection, hint=hint, worker=worker, now=now,
        saturated_targets=targets, saturated_owners=owners,
    )
    row = statements.update_and_append_event(
        connection, alias=alias, update_sql=sql, update_params=params,
        event_params=statements.event_values(
            connection, ExecutionEventType.STATUS,
            {"status": ExecutionStatus.RUNNING, "worker": worker},
        ),
        fetch_row=True,
    )
    if row is None:
        return None
    execution = statements.row_reader(connection)(row[:-2])
    publish_on_commit(channel_name("execution", execution.pk))
    return execution


def execution_claim(*, hint: UUID | str, worker: str) -> Execution | None:
    """Claim, for ``worker``, the execution it should run next (pending -> running, counting the
    attempt), among those of the timeout class of ``hint``, the execution the message named.
    Returns the row as the claim left it, or None when nothing may run now."""
    alias = router.db_for_write(Execution)
    connection = connections[alias]
    hint_id = _as_uuid(hint)
    limited = bool(registry.concurrency_limits()) or bool(settings.EXECUTIONS_MAX_RUNNING_PER_USER)
    if not limited:
        # One statement on PostgreSQL (the UPDATE and its event), no transaction around it.
        return _claim_once(connection, alias, hint=hint_id, worker=worker, targets=(), owners=())
    targets, owners = _saturated()
    for _ in range(_CLAIM_TRIES):
        try:
            with transaction.atomic(using=alias):
                execution = _claim_once(
                    connection, alias, hint=hint_id, worker=worker, targets=targets, owners=owners
                )
                if execution is not None:
                    _check_limits(connection, execution)
                return execution
        except _OverLimit as lost:
            if lost.target is not None:
                targets = [*targets, lost.target]
            if lost.owner is not None:
                owners = [*owners, lost.owner]
    return None


def execution_slot_freed(execution: Execution) -> None:
    """After ``execution`` stopped running: if its target or owner has a concurrency limit, wake a
    worker for the next execution waiting for that slot (those hold no message of their own)."""
    from executions.queueing import enqueue_execution  # queueing imports the models only

    limit = registry.concurrency_limits().get(execution.target_id)
    per_user = settings.EXECUTIONS_MAX_RUNNING_PER_USER if execution.owner_id else 0
    if limit is None and not per_user:
        return
    waiting = Execution.objects.filter(status=ExecutionStatus.PENDING).order_by(
        "-priority", "created_at", "id"
    ).only("id", "config")
    woken: dict[UUID, Execution] = {}
    if limit is not None:
        woken.update((row.pk, row) for row in waiting.filter(target_id=execution.target_id)[:1])
    if per_user:
        woken.update((row.pk, row) for row in waiting.filter(owner_id=execution.owner_id)[:1])
    for row in woken.values():
        enqueue_execution(row)
