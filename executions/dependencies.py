"""Dependencies between executions (``depends_on``): a DAG, acyclic by construction since an
execution may only depend on executions that exist when it is created.

An execution with an unfinished dependency is created ``blocked``: pending, with no broker
message, skipped by the claim. Every end of an execution goes through ``dependents_settle``
(called by ``executions.transitions`` when a row reaches a terminal status):

- completed: the dependents whose dependencies have now all completed are unblocked and queued;
- failed: every pending execution downstream of it, transitively, fails at once with
  ``error.type`` = ``DependencyFailed`` naming the dependency it waited for and the one that
  failed first, without a worker ever taking it;
- cancelled: the same cascade, the dependents being cancelled instead (cancelling a parent
  cancels what was waiting for it).

If a process dies between an end and its settle, the sweep's ``dependents_settle_missed`` finds
the blocked executions whose dependencies all ended and settles them. A dependent created while
its dependency ends cannot be missed: the create reads its dependencies
``FOR UPDATE`` (PostgreSQL; SQLite's writer is single), so either the create sees the end or the
end's settle sees the new link.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from django.utils import timezone

from executions.models import Execution, ExecutionDependency, ExecutionEventType, ExecutionStatus

MAX_DEPENDENCIES = 50
DEPENDENCY_FAILED = "DependencyFailed"

# Set while a cascade runs: the transitions it makes call ``dependents_settle`` again, which
# has nothing to add to the cascade already walking the whole graph.
_cascading = threading.local()


class DependencyInvalid(ValueError):
    """``depends_on`` names an execution that cannot be depended on; the message says why."""


def dependency_ids(raw: Any) -> list[UUID]:
    """``depends_on`` as distinct UUIDs, in the given order, or ``DependencyInvalid``."""
    if not isinstance(raw, list):
        raise DependencyInvalid("Must be a list of execution ids.")
    if len(raw) > MAX_DEPENDENCIES:
        raise DependencyInvalid(f"At most {MAX_DEPENDENCIES} dependencies, got {len(raw)}.")
    ids: list[UUID] = []
    for item in raw:
        try:
            value = item if isinstance(item, UUID) else UUID(str(item))
        except ValueError:
            raise DependencyInvalid(f"'{item}' is not an execution id.") from None
        if value not in ids:
            ids.append(value)
    return ids


def dependencies_locked(*, owner: Any, ids: Sequence[UUID]) -> list[Execution]:
    """The executions ``ids`` names, read for update (inside the create's transaction), or
    ``DependencyInvalid`` if one is not ``owner``'s."""
    if not ids:
        return []
    rows = {
        row.pk: row
        for row in Execution.objects.select_for_update()
        .filter(pk__in=list(ids), owner=owner)
        .only("id", "status")
    }
    missing = [str(pk) for pk in ids if pk not in rows]
    if missing:
        raise DependencyInvalid(f"No execution {missing[0]} of yours to depend on.")
    return [rows[pk] for pk in ids]


def dependencies_failed(upstream: Iterable[Execution]) -> Execution | None:
    """The first dependency that failed or was cancelled, if any."""
    for row in upstream:
        if row.status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
            return row
    return None


def is_blocked(upstream: Iterable[Execution]) -> bool:
    return any(row.status != ExecutionStatus.COMPLETED for row in upstream)


def dependency_error(*, dependency: UUID, root: UUID, root_status: str) -> dict[str, Any]:
    how = "was cancelled" if root_status == ExecutionStatus.CANCELLED else "failed"
    if dependency == root:
        message = f"Dependency {dependency} {how}."
    else:
        message = f"Dependency {dependency} did not run: its dependency {root} {how}."
    return {
        "type": DEPENDENCY_FAILED,
        "message": message,
        "details": {"dependency": str(dependency), "root": str(root), "root_status": root_status},
    }


def dependents_settle(*, execution_id: UUID | str, status: str) -> None:
    """``execution_id`` just reached the terminal ``status``: unblock or end its dependents."""
    if getattr(_cascading, "active", False):
        return
    execution_id = execution_id if isinstance(execution_id, UUID) else UUID(str(execution_id))
    if status == ExecutionStatus.COMPLETED:
        _release(execution_id)
    else:
        _cascade(execution_id, status)


def _release(execution_id: UUID) -> None:
    from executions.queueing import enqueue_execution_on_commit

    waiting = list(
        ExecutionDependency.objects.filter(
            upstream_id=execution_id, downstream__status=ExecutionStatus.PENDING,
            downstream__blocked=True,
        ).values_list("downstream_id", flat=True)
    )
    if not waiting:
        return
    unfinished = [s for s in ExecutionStatus.values if s != ExecutionStatus.COMPLETED]
    ready = Execution.objects.filter(pk__in=waiting).exclude(
        upstream_links__upstream__status__in=unfinished
    ).only("id", "config")
    for row in ready:
        if Execution.objects.filter(
            pk=row.pk, status=ExecutionStatus.PENDING, blocked=True
        ).update(blocked=False):
            enqueue_execution_on_commit(row)


def _cascade(root: UUID, root_status: str) -> None:
    from executions.completion import execution_ended_notify
    from executions.transitions import execution_transition

    cancelled = root_status == ExecutionStatus.CANCELLED
    target = ExecutionStatus.CANCELLED if cancelled else ExecutionStatus.FAILED
    seen: set[UUID] = set()
    frontier = [root]
    _cascading.active = True
    try:
        while frontier:
            links = ExecutionDependency.objects.filter(
                upstream_id__in=frontier, downstream__status=ExecutionStatus.PENDING
            ).values_list("upstream_id", "downstream_id", "downstream__webhook")
            frontier = []
            for upstream_id, downstream_id, webhook in links:
                if downstream_id in seen:
                    continue
                seen.add(downstream_id)
                error = dependency_error(dependency=upstream_id, root=root, root_status=root_status)
                now = timezone.now()
                ended: dict[str, Any] = {"cancelled_at" if cancelled else "completed_at": now}
                if execution_transition(
                    execution_id=downstream_id, allowed=[ExecutionStatus.PENDING],
                    event_type=ExecutionEventType.STATUS,
                    event_data={"status": target, "error": error},
                    status=target, error=error, blocked=False, **ended,
                ):
                    frontier.append(downstream_id)
                    if webhook:
                        execution_ended_notify(execution_id=downstream_id)
    finally:
        _cascading.active = False


def dependents_settle_missed(*, limit: int = 1000) -> int:
    """Settle the blocked executions whose dependencies all ended, which a process that died
    between an end and its ``dependents_settle`` left waiting; how many dependencies it settled."""
    active = list(ExecutionStatus.active())
    stuck = (
        ExecutionDependency.objects.filter(
            downstream__status=ExecutionStatus.PENDING, downstream__blocked=True
        )
        .exclude(upstream__status__in=active)
        .values_list("upstream_id", "upstream__status")
        .distinct()[:limit]
    )
    settled = 0
    for upstream_id, status in stuck:
        dependents_settle(execution_id=upstream_id, status=status)
        settled += 1
    return settled
