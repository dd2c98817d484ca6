"""Every write to executions made on behalf of users: API, admin and management commands."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import serializers

from executions.completion import execution_ended_notify
from executions.dependencies import (
    MAX_DEPENDENCIES,
    DependencyInvalid,
    dependencies_failed,
    dependencies_locked,
    dependency_error,
    dependency_ids,
    is_blocked,
)
from executions.models import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    Execution,
    ExecutionDependency,
    ExecutionEventType,
    ExecutionStatus,
    ExecutionType,
)
from executions.queueing import enqueue_execution_on_commit
from executions.registry import InputsInvalid, TargetNotFound, registry
from executions.transitions import execution_transition
from project.api.errors import Conflict, InvalidInput, TooManyActive
from project.api.idempotency import Idempotency, create_once
from project.telemetry import job_created


def execution_request_validate(
    *, type: str, target_id: str, inputs: Any, config: Any
) -> tuple[dict, dict]:
    """The inputs and config an execution of ``target_id`` would be created with, or
    ``InvalidInput`` naming the field: what a schedule checks when it is saved."""
    return _validated(type, target_id, inputs), _validated_config(config)


def _validated(type_: str, target_id: str, inputs: Any) -> dict:
    if type_ not in ExecutionType.values:
        raise InvalidInput({"type": [f"Must be one of: {', '.join(ExecutionType.values)}."]})
    try:
        target = registry.get(type_, target_id)
    except TargetNotFound as exc:
        raise InvalidInput({"target_id": [str(exc)]}) from None
    try:
        return target.validate_inputs(inputs)
    except InputsInvalid as exc:
        raise InvalidInput({"inputs": exc.errors}) from None


class ExecutionConfigSerializer(serializers.Serializer):
    """The config keys the platform itself reads; any other key is passed on to the target."""

    timeout = serializers.FloatField(
        required=False, min_value=1,
        help_text="Seconds before the execution is stopped and failed with error.type 'timeout'.",
    )
    max_attempts = serializers.IntegerField(
        required=False, min_value=1, max_value=20,
        help_text="Attempts before a failure is final (retries back off exponentially).",
    )
    retry_backoff = serializers.FloatField(
        required=False, min_value=0, max_value=300, help_text="Seconds before the first retry."
    )
    priority = serializers.IntegerField(
        required=False, min_value=PRIORITY_MIN, max_value=PRIORITY_MAX,
        help_text="Same as the top-level priority (kept for clients that sent it in config).",
    )

    def validate_timeout(self, value: float) -> float:
        if value > settings.EXECUTIONS_TIMEOUT:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.EXECUTIONS_TIMEOUT} (EXECUTIONS_TIMEOUT)."
            )
        return value


def _validated_config(config: Any) -> dict:
    if not isinstance(config, dict):
        raise InvalidInput({"config": ["Must be a JSON object."]})
    known = ExecutionConfigSerializer(data=config)
    if not known.is_valid():
        raise InvalidInput({"config": known.errors})
    return {**config, **known.validated_data}


def _priority(priority: int | None, config: dict) -> int:
    """The execution's priority: the ``priority`` field, or ``config.priority`` (validated with
    the rest of the config) for clients that put it there; both, differing, is a 400."""
    configured = config.get("priority")
    if priority is not None and configured is not None and priority != configured:
        raise InvalidInput(
            {"priority": [f"Differs from config.priority ({configured}); give one of them."]}
        )
    chosen = priority if priority is not None else configured
    if chosen is None:
        return 0
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not (
        PRIORITY_MIN <= chosen <= PRIORITY_MAX
    ):
        raise InvalidInput(
            {"priority": [f"Must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}."]}
        )
    return chosen


def _check_active_limit(owner) -> None:
    limit = settings.EXECUTIONS_MAX_ACTIVE_PER_USER
    if owner is None or not limit:
        return
    # A soft cap: two racing creates may both pass at the edge, which is harmless.
    if Execution.objects.owned_by(owner).active().count() >= limit:
        raise TooManyActive(
            detail=f"You already have {limit} pending or running executions "
            "(EXECUTIONS_MAX_ACTIVE_PER_USER); wait for some to finish or cancel them."
        )


def execution_create(
    *,
    owner=None,
    type: str,
    target_id: str,
    inputs: dict | None = None,
    config: dict | None = None,
    retry_of: Execution | None = None,
    idempotency: Idempotency | None = None,
    webhook: str = "",
    priority: int | None = None,
    schedule_id: UUID | None = None,
    depends_on: list[Any] | None = None,
) -> Execution:
    """Validate, store and queue a new execution. Workers get the id when the row commits.
    ``webhook``: a URL already checked (``webhooks.destinations``), POSTed to when it ends.
    ``priority``: −10 to 10, higher claimed first (default 0, or ``config.priority``).
    ``schedule_id``: the schedule whose firing starts it. ``depends_on``: ids of ``owner``'s
    executions that must complete before this one runs (``executions.dependencies``)."""
    item = _item_validated(
        type=type, target_id=target_id, inputs=inputs, config=config, priority=priority,
        depends_on=depends_on,
    )
    _check_active_limit(owner)
    with transaction.atomic():
        execution = _item_create(
            item, owner=owner, retry_of=retry_of, webhook=webhook, schedule_id=schedule_id,
            stored=idempotency.stored() if idempotency else {},
            depends_on=_dependencies(owner, item.depends_on),
        )
    job_created(kind="execution", target=target_id)
    return execution


@dataclass(frozen=True)
class _Item:
    """One create request, validated: what ``_item_create`` stores."""

    type: str
    target_id: str
    inputs: dict
    config: dict
    priority: int
    depends_on: list[UUID]
    # Batch references (``"$2"``): indexes of earlier items of the same batch.
    depends_on_items: list[int] = field(default_factory=list)


def _item_validated(
    *, type: str, target_id: str, inputs: Any, config: Any, priority: int | None,
    depends_on: Any, batch_index: int | None = None,
) -> _Item:
    config = _validated_config(config if config is not None else {})
    chosen_priority = _priority(priority, config)
    validated_inputs = _validated(type, target_id, inputs if inputs is not None else {})
    ids: list[UUID] = []
    items: list[int] = []
    raw = depends_on if depends_on is not None else []
    if batch_index is not None and isinstance(raw, list):
        items, raw = _batch_references(raw, batch_index)
    try:
        ids = dependency_ids(raw)
    except DependencyInvalid as exc:
        raise InvalidInput({"depends_on": [str(exc)]}) from None
    if len(ids) + len(items) > MAX_DEPENDENCIES:
        raise InvalidInput({"depends_on": [f"At most {MAX_DEPENDENCIES} dependencies."]})
    return _Item(
        type=type, target_id=target_id, inputs=validated_inputs, config=config,
        priority=chosen_priority, depends_on=ids, depends_on_items=items,
    )


def _batch_references(raw: list, batch_index: int) -> tuple[list[int], list[Any]]:
    """Split ``depends_on`` into references to earlier items (``"$N"``) and execution ids."""
    items: list[int] = []
    ids: list[Any] = []
    for value in raw:
        if isinstance(value, str) and value.startswith("$"):
            try:
                index = int(value[1:])
            except ValueError:
                raise InvalidInput({"depends_on": [f"'{value}' is not a batch reference ($N)."]}) from None
            if not 0 <= index < batch_index:
                raise InvalidInput(
                    {"depends_on": [f"'{value}' must name an earlier item of the batch."]}
                )
            if index not in items:
                items.append(index)
        else:
            ids.append(value)
    return items, ids


def _dependencies(owner, ids: list[UUID]) -> list[Execution]:
    try:
        return dependencies_locked(owner=owner, ids=ids)
    except DependencyInvalid as exc:
        raise InvalidInput({"depends_on": [str(exc)]}) from None


def _item_create(
    item: _Item, *, owner, depends_on: list[Execution], retry_of: Execution | None = None,
    webhook: str = "", stored: dict | None = None, batch_id: UUID | None = None,
    schedule_id: UUID | None = None,
) -> Execution:
    """Insert one validated execution with its links and ``created`` event, and queue it unless a
    dependency holds it back. Runs inside the caller's transaction."""
    failed = dependencies_failed(depends_on)
    execution = Execution.objects.create(
        owner=owner,
        type=item.type,
        target_id=item.target_id,
        inputs=item.inputs,
        config=item.config,
        priority=item.priority,
        blocked=failed is None and is_blocked(depends_on),
        batch_id=batch_id,
        retry_of=retry_of,
        webhook=webhook or "",
        schedule_id=schedule_id,
        event_seq=1,
        **(stored or {}),
    )
    if depends_on:
        ExecutionDependency.objects.bulk_create(
            [ExecutionDependency(upstream=row, downstream=execution) for row in depends_on]
        )
    execution.events.create(
        seq=1,
        type=ExecutionEventType.CREATED,
        data={
            "status": ExecutionStatus.PENDING,
            "retry_of": str(retry_of.pk) if retry_of else None,
            **({"depends_on": [str(row.pk) for row in depends_on]} if depends_on else {}),
        },
    )
    if failed is not None:
        # A dependency already failed: this one can never run, and says why at once.
        error = dependency_error(dependency=failed.pk, root=failed.pk, root_status=failed.status)
        execution_transition(
            execution_id=execution.pk, allowed=[ExecutionStatus.PENDING],
            event_type=ExecutionEventType.STATUS,
            event_data={"status": ExecutionStatus.FAILED, "error": error},
            status=ExecutionStatus.FAILED, error=error, completed_at=timezone.now(),
        )
        execution.refresh_from_db()
    elif not execution.blocked:
        enqueue_execution_on_commit(execution)
    return execution


def execution_create_idempotent(
    *, owner, idempotency: Idempotency, type: str, target_id: str, inputs: dict | None = None,
    config: dict | None = None, webhook: str = "", priority: int | None = None,
    depends_on: list[Any] | None = None,
) -> tuple[Execution, bool]:
    """Like ``execution_create``, but a retry of the request with the same key from the same owner
    returns the execution it first created instead of starting a second one; the same key with
    another request is a ``Conflict`` (``project.api.idempotency``). Returns (execution, created)."""
    return create_once(
        Execution, owner=owner, idempotency=idempotency, what="execution",
        create=lambda: execution_create(
            owner=owner, type=type, target_id=target_id, inputs=inputs, config=config,
            idempotency=idempotency, webhook=webhook, priority=priority, depends_on=depends_on,
        ),
    )


def execution_cancel(*, execution: Execution) -> Execution:
    """Cancel a pending or running execution.

    The row turns ``cancelled`` at once; a worker running it notices at its next progress point or
    cancellation check (within ``EXECUTIONS_CANCEL_CHECK_INTERVAL``) and stops. Cancelling a
    cancelled execution is harmless; cancelling a completed or failed one is a ``Conflict``.
    """
    now = timezone.now()
    won = execution_transition(
        execution_id=execution.pk,
        allowed=ExecutionStatus.active(),
        event_type=ExecutionEventType.STATUS,
        event_data={"status": ExecutionStatus.CANCELLED},
        status=ExecutionStatus.CANCELLED,
        cancelled_at=now,
        heartbeat_at=None,
    )
    execution.refresh_from_db()
    if won and execution.webhook:
        execution_ended_notify(execution_id=execution.pk)
    if not won and execution.status != ExecutionStatus.CANCELLED:
        raise Conflict(
            f"Execution {execution.pk} is already {execution.status} and cannot be cancelled."
        )
    return execution


def execution_retry(*, execution: Execution, owner=None) -> Execution:
    """Start a new execution with the same target, inputs and config as a finished one."""
    if execution.status not in ExecutionStatus.terminal():
        raise Conflict(
            f"Execution {execution.pk} is still {execution.status}; "
            "only finished executions can be retried."
        )
    return execution_create(
        owner=owner if owner is not None else execution.owner,
        type=execution.type,
        target_id=execution.target_id,
        inputs=execution.inputs,
        config=execution.config,
        retry_of=execution,
        webhook=execution.webhook,
        priority=execution.priority,
        depends_on=list(execution.upstream_links.values_list("upstream_id", flat=True)),
    )


@dataclass(frozen=True)
class BulkResult:
    changed: list[UUID]
    skipped: list[UUID]


def executions_cancel_many(*, executions: list[Execution]) -> BulkResult:
    """Cancel the active ones among ``executions``; the rest are reported as skipped."""
    changed, skipped = [], []
    for execution in executions:
        if execution.status not in ExecutionStatus.active():
            skipped.append(execution.pk)
            continue
        try:
            execution_cancel(execution=execution)
        except Conflict:  # finished between the read and the update
            skipped.append(execution.pk)
        else:
            changed.append(execution.pk)
    return BulkResult(changed=changed, skipped=skipped)


def executions_retry_many(*, executions: list[Execution]) -> tuple[list[Execution], list[UUID]]:
    """Retry the finished ones among ``executions``; returns (new executions, skipped ids)."""
    created, skipped = [], []
    for execution in executions:
        if execution.status not in ExecutionStatus.terminal():
            skipped.append(execution.pk)
            continue
        try:
            created.append(execution_retry(execution=execution))
        except InvalidInput:  # the target was unregistered since
            skipped.append(execution.pk)
    return created, skipped


PRUNE_BATCH_SIZE = 1000


def executions_prune(
    *,
    older_than: datetime,
    dry_run: bool = False,
    batch_size: int = PRUNE_BATCH_SIZE,
    max_batches: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Delete finished executions (and their events) that ended before ``older_than``; returns how
    many. ``dry_run`` only counts them.

    Oldest first, ``batch_size`` executions per transaction, walking the (created_at, id) index
    from where the previous batch stopped: memory and lock time stay those of one batch however
    many millions are due (one transaction over all of them took 1.7 GB for 270k rows), and an
    interrupted prune keeps what it deleted. ``max_batches`` bounds one call (the scheduled
    prune); ``progress`` is called with the running total after each batch. Rows another prune
    holds are skipped (PostgreSQL), so several workers may prune at once.
    """
    # An execution ends after it is created: the created_at bound lets the index find the rows.
    due = Execution.objects.finished_before(older_than).filter(created_at__lt=older_than)
    if dry_run:
        return due.count()
    deleted = 0
    batches = 0
    after: tuple[datetime, UUID] | None = None
    while max_batches is None or batches < max_batches:
        with transaction.atomic():
            batch = due
            if after is not None:
                at, pk = after
                batch = batch.filter(Q(created_at__gt=at) | Q(created_at=at, id__gt=pk), created_at__gte=at)
            rows = list(
                batch.order_by("created_at", "id")
                .select_for_update(skip_locked=True)
                .values_list("created_at", "id")[:batch_size]
            )
            if not rows:
                break
            # Only the ids: the cascade needs no more, and JSON columns cost memory and time.
            Execution.objects.filter(pk__in=[pk for _, pk in rows]).only("pk").delete()
        deleted += len(rows)
        batches += 1
        after = rows[-1]
        if progress is not None:
            progress(deleted)
    return deleted


BATCH_MAX = 100


def executions_create_batch(
    *, owner, items: list[dict[str, Any]], idempotency: Idempotency | None = None
) -> tuple[list[Execution], bool]:
    """Create the executions ``items`` describes (create bodies, already shape-checked), all or
    none, in one transaction: every item is validated before any is stored, and a problem is an
    ``InvalidInput`` naming the item's index. An item's ``depends_on`` may name earlier items as
    ``"$N"``. With ``idempotency``, a retry of the same batch returns the executions it created.
    Returns (executions in the items' order, created)."""
    if not items:
        raise InvalidInput({"executions": ["Give at least one execution."]})
    if len(items) > BATCH_MAX:
        raise InvalidInput({"executions": [f"At most {BATCH_MAX} executions per batch, got {len(items)}."]})
    validated = []
    for index, raw in enumerate(items):
        try:
            validated.append(
                _item_validated(
                    type=raw["type"], target_id=raw["target_id"], inputs=raw.get("inputs"),
                    config=raw.get("config"), priority=raw.get("priority"),
                    depends_on=raw.get("depends_on"), batch_index=index,
                )
            )
        except InvalidInput as exc:
            raise InvalidInput({f"executions[{index}]": exc.detail}) from None
    webhooks = [raw.get("webhook") or "" for raw in items]
    if idempotency is None:
        return _batch_create(owner, validated, webhooks, None), True
    keys = [idempotency.batch_item(index).key for index in range(len(validated))]
    _first, created = create_once(
        Execution, owner=owner, idempotency=idempotency.batch_item(0), what="the batch starting with",
        create=lambda: _batch_create(owner, validated, webhooks, idempotency)[0],
    )
    rows = {
        row.idempotency_key: row
        for row in Execution.objects.filter(owner=owner, idempotency_key__in=keys)
    }
    return [rows[key] for key in keys], created


def _batch_create(
    owner, validated: list[_Item], webhooks: list[str], idempotency: Idempotency | None
) -> list[Execution]:
    limit = settings.EXECUTIONS_MAX_ACTIVE_PER_USER
    if owner is not None and limit:
        active = Execution.objects.owned_by(owner).active().count()
        if active + len(validated) > limit:
            raise TooManyActive(
                detail=f"This batch would take you past {limit} pending or running executions "
                f"(EXECUTIONS_MAX_ACTIVE_PER_USER; you have {active}); wait for some to finish "
                "or cancel them."
            )
    batch_id = uuid.uuid4()
    created: list[Execution] = []
    with transaction.atomic():
        for index, item in enumerate(validated):
            try:
                upstream = _dependencies(owner, item.depends_on)
            except InvalidInput as exc:
                raise InvalidInput({f"executions[{index}]": exc.detail}) from None
            upstream += [created[earlier] for earlier in item.depends_on_items]
            created.append(
                _item_create(
                    item, owner=owner, depends_on=upstream, webhook=webhooks[index],
                    batch_id=batch_id,
                    stored=idempotency.batch_item(index).stored() if idempotency else {},
                )
            )
    for execution in created:
        job_created(kind="execution", target=execution.target_id)
    return created
