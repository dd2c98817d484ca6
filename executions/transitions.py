"""The two write primitives every execution change goes through.

A status change is one conditional UPDATE (``WHERE status IN allowed``) whose row count says who
won; the event that records it is appended in the same transaction, numbered from the row's
``event_seq`` counter, which the UPDATE bumps, so concurrent writers (API and worker) never
collide on a sequence number and a reader never sees a status without its event.

A status change may only make a move of ``EXECUTION_TRANSITIONS`` (the table in
``ExecutionStatus``'s docstring): its allowed statuses are derived from that table.

A worker's writes are fenced by its claim (``ExecutionClaim``): the claim's worker and attempt go
into the same WHERE clause, so a worker that froze past the heartbeat timeout, and whose job
recovery gave to another worker or failed meanwhile, changes nothing when it wakes up, at no cost
of an extra statement.

These run several times per execution, so they cost as few statements as the database allows.
The UPDATE returns the bumped counter (and, for a claim, the whole row) with ``RETURNING``
instead of a SELECT after it. On PostgreSQL the UPDATE and the event INSERT are one statement
(data-modifying CTEs): one round trip, atomic on its own. On SQLite they are two statements in
one transaction. A database without ``UPDATE … RETURNING`` takes the plain ORM path. The SQL
itself is in ``executions.statements``.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import connections, router, transaction
from django.db.models import F, Q

from executions import statements
from executions.models import Execution, ExecutionEvent, ExecutionStatus
from project.realtime.event_hub import channel_name, publish_on_commit


@dataclass(frozen=True)
class ExecutionClaim:
    """One claim of an execution: the worker that took it and the attempt its claim counted.

    ``attempts`` grows by one at every claim, so (worker, attempt) names one claim for good: once
    recovery requeued the row (and another worker claimed it) or failed it, ``holds()`` matches
    no more, and the old worker's writes change nothing.
    """

    execution_id: UUID
    worker: str
    attempt: int

    def holds(self) -> Q:
        """The WHERE clause of a write this claim's worker makes."""
        return Q(worker=self.worker, attempts=self.attempt)


def _allowed_statuses(allowed: Iterable[str] | None, fields: dict[str, Any]) -> list[str] | None:
    """The statuses a write may apply to: for a status change, the sources the transition table
    gives its target status (``allowed``, if given, must be among them)."""
    target = fields.get("status")
    if target is None:
        return None if allowed is None else list(allowed)
    sources = ExecutionStatus.sources(target)
    if allowed is None:
        return list(sources)
    allowed = list(allowed)
    illegal = [status for status in allowed if status not in sources]
    if illegal:
        raise ValueError(f"no transition {illegal} -> {target}: see ExecutionStatus")
    return allowed


def _apply(
    *,
    execution_id: UUID | str,
    allowed: Iterable[str] | None,
    event_type: str,
    event_data: dict[str, Any],
    where: Q | None,
    fields: dict[str, Any],
    fetch_row: bool,
) -> tuple[int, Execution | None] | None:
    """Update and append the event; (event seq, row if ``fetch_row``), or None if no row matched.
    A row that reached a terminal status settles its dependents (``executions.dependencies``)."""
    applied = _apply_once(
        execution_id=execution_id, allowed=allowed, event_type=event_type, event_data=event_data,
        where=where, fields=fields, fetch_row=fetch_row,
    )
    status = fields.get("status")
    if applied is not None and status in ExecutionStatus.terminal():
        from executions.dependencies import dependents_settle  # it makes transitions itself

        dependents_settle(execution_id=execution_id, status=status)
    return applied


def _apply_once(
    *,
    execution_id: UUID | str,
    allowed: Iterable[str] | None,
    event_type: str,
    event_data: dict[str, Any],
    where: Q | None,
    fields: dict[str, Any],
    fetch_row: bool,
) -> tuple[int, Execution | None] | None:
    allowed = _allowed_statuses(allowed, fields)
    alias = router.db_for_write(Execution)
    connection = connections[alias]
    if not statements.supports_update_returning(connection):
        return _apply_with_orm(
            execution_id=execution_id, allowed=allowed, event_type=event_type,
            event_data=event_data, where=where, fields=fields, fetch_row=fetch_row, alias=alias,
        )
    update_sql, update_params = statements.update_sql(
        connection, execution_id=execution_id, allowed=allowed, where=where, fields=fields
    )
    row = statements.update_and_append_event(
        connection, alias=alias, update_sql=update_sql, update_params=update_params,
        event_params=statements.event_values(connection, event_type, event_data),
        fetch_row=fetch_row,
    )
    if row is None:
        return None
    publish_on_commit(channel_name("execution", execution_id))
    return row[-1], statements.row_reader(connection)(row[:-2]) if fetch_row else None


def _apply_with_orm(
    *, execution_id: UUID | str, allowed: Iterable[str] | None, event_type: str,
    event_data: dict[str, Any], where: Q | None, fields: dict[str, Any], fetch_row: bool, alias: str,
) -> tuple[int, Execution | None] | None:
    with transaction.atomic(using=alias):
        queryset = Execution.objects.filter(where or Q(), pk=execution_id)
        if allowed is not None:
            queryset = queryset.filter(status__in=list(allowed))
        if not queryset.update(event_seq=F("event_seq") + 1, **fields):
            return None
        execution = Execution.objects.get(pk=execution_id)
        ExecutionEvent.objects.create(
            execution_id=execution_id, seq=execution.event_seq, type=event_type, data=event_data
        )
    publish_on_commit(channel_name("execution", execution_id))
    return execution.event_seq, execution if fetch_row else None


def execution_transition(
    *,
    execution_id: UUID | str,
    allowed: Iterable[str] | None = None,
    event_type: str,
    event_data: dict[str, Any],
    where: Q | None = None,
    **fields: Any,
) -> bool:
    """Apply ``fields`` if the execution's status is in ``allowed`` (and it matches the extra
    ``where`` lookups); True if this call won. With a ``status`` in ``fields``, ``allowed``
    defaults to the statuses the transition table lets move there, and may only narrow them."""
    return _apply(
        execution_id=execution_id, allowed=allowed, event_type=event_type, event_data=event_data,
        where=where, fields=fields, fetch_row=False,
    ) is not None


def execution_transition_fetch(
    *,
    execution_id: UUID | str,
    allowed: Iterable[str] | None = None,
    event_type: str,
    event_data: dict[str, Any],
    where: Q | None = None,
    **fields: Any,
) -> Execution | None:
    """Like ``execution_transition``, but returns the row as this call left it (None if it lost),
    read by the same statement: what a worker's claim needs."""
    applied = _apply(
        execution_id=execution_id, allowed=allowed, event_type=event_type, event_data=event_data,
        where=where, fields=fields, fetch_row=True,
    )
    return applied[1] if applied is not None else None


def execution_event_append(
    *, execution_id: UUID | str, event_type: str, data: dict[str, Any]
) -> int:
    """Append an event without a status change; returns its sequence number."""
    applied = _apply(
        execution_id=execution_id, allowed=None, event_type=event_type, event_data=data,
        where=None, fields={}, fetch_row=False,
    )
    if applied is None:
        raise Execution.DoesNotExist(f"Execution {execution_id} does not exist.")
    return applied[0]


def execution_event_append_if(
    *,
    execution_id: UUID | str,
    event_type: str,
    data: dict[str, Any],
    allowed: Iterable[str],
    where: Q,
) -> int | None:
    """Append an event without a status change if the execution's status is in ``allowed`` and it
    matches ``where`` (a worker's claim); its sequence number, or None if the row did not match."""
    applied = _apply(
        execution_id=execution_id, allowed=allowed, event_type=event_type, event_data=data,
        where=where, fields={}, fetch_row=False,
    )
    return applied[0] if applied is not None else None
