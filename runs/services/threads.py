"""Writes of threads: create (idempotent), metadata, copy, delete and prune, the status a thread
falls back to when its runs stop, and the end of a stateless run's temporary thread.

A thread delete cascades to its runs; each delete locks those runs first (``lock_runs_before_delete``)
and then deletes the checkpoints, which live in another app's tables.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, cast

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from runs.errors import Conflict
from runs.graphs import checkpointer
from runs.models import DiscardedRun, Run, RunStatus, Thread, ThreadStatus, uuid7
from runs.selectors import run_result
from runs.services.idempotency import Idempotency, create_once
from runs.services.inputs import check_json_size, parse_uuid
from runs.wakeups import run_changed, thread_changed


def thread_create(
    *,
    owner,
    thread_id: Any = None,
    metadata: dict | None = None,
    if_exists: str = "raise",
    idempotency: Idempotency | None = None,
) -> Thread:
    pk = parse_uuid(thread_id, "thread") if thread_id is not None else uuid7()
    check_json_size("metadata", metadata)
    try:
        with transaction.atomic():
            return Thread.objects.create(
                thread_id=pk, owner=owner, metadata=metadata or {},
                **(idempotency.stored() if idempotency else {}),
            )
    except IntegrityError:
        existing = Thread.objects.filter(pk=pk, owner=owner).first()
        if existing is not None and if_exists == "do_nothing":
            return existing
        raise Conflict(f"Thread with ID {pk} already exists") from None


def thread_create_idempotent(*, owner, idempotency: Idempotency | None, **fields: Any) -> tuple[Thread, bool]:
    """``thread_create``, or the thread an earlier request with the same key created."""
    if idempotency is None:
        return thread_create(owner=owner, **fields), True
    return create_once(
        Thread, owner=owner, idempotency=idempotency, what="thread",
        create=lambda: thread_create(owner=owner, idempotency=idempotency, **fields),
    )


def thread_update(*, thread: Thread, metadata: dict | None = None) -> Thread:
    """Merge ``metadata`` into the thread's."""
    check_json_size("metadata", metadata)
    with transaction.atomic():
        thread = Thread.objects.select_for_update().get(pk=thread.pk)
        if metadata:
            thread.metadata = {**thread.metadata, **metadata}
            check_json_size("metadata", thread.metadata)
        thread.updated_at = timezone.now()
        thread.save(update_fields=["metadata", "updated_at"])
    return thread


def thread_checkpoints_delete(*, thread_ids: Iterable[uuid.UUID]) -> None:
    """Delete the checkpoints of deleted threads (another app's tables: no cascade reaches them)."""
    saver = checkpointer()
    for thread_id in thread_ids:
        saver.delete_thread(str(thread_id))


def lock_runs_before_delete(runs: QuerySet) -> list:
    """Lock the runs a delete is about to cascade to, and return their ids.

    Django collects a run's events before deleting it; an event a worker committed in between
    made PostgreSQL refuse the whole delete (foreign key) and the user got a 500. Once the runs are
    locked, a worker's event either committed before (and is collected) or waits for the delete
    and then finds its run gone, which it handles like a cancel. (SQLite has one writer: no-op.)
    """
    return list(runs.select_for_update().values_list("pk", flat=True))


def thread_delete(*, thread: Thread) -> None:
    """Delete a thread, its runs and its checkpoints. A worker running one of its runs sees the
    row vanish within its cancel-check interval and stops the graph."""
    thread_id = thread.pk
    with transaction.atomic():
        run_ids = lock_runs_before_delete(Run.objects.filter(thread_id=thread_id))
        thread.delete()
        thread_changed(thread_id)  # its stream and its runs' streams close
        for run_id in run_ids:
            run_changed(run_id)
    thread_checkpoints_delete(thread_ids=[thread_id])


def thread_copy(*, thread: Thread) -> Thread:
    """A new thread of the same owner with the same metadata and a copy of the checkpoints."""
    now = timezone.now()
    new = Thread.objects.create(
        owner=thread.owner,
        metadata=copy.deepcopy(thread.metadata),
        config=copy.deepcopy(thread.config),
        status=thread.resting_status,
        resting_status=thread.resting_status,
        values=copy.deepcopy(thread.values),
        interrupts=copy.deepcopy(thread.interrupts),
        error=copy.deepcopy(thread.error),
        has_run=thread.has_run,
        created_at=now,
        updated_at=now,
        state_updated_at=now,
    )
    checkpointer().copy_thread(str(thread.pk), str(new.pk))
    return new


def threads_prune(*, user, thread_ids: list, strategy: str = "delete") -> int:
    """Delete threads (strategy ``delete``) or their old checkpoints (``keep_latest``)."""
    pks = [parse_uuid(value, "thread") for value in thread_ids]
    owned = list(Thread.objects.owned_by(user).filter(pk__in=pks).values_list("pk", flat=True))
    if not owned:
        return 0
    if strategy == "keep_latest":
        checkpointer().prune([str(pk) for pk in owned], strategy="keep_latest")
        return len(owned)
    with transaction.atomic():
        lock_runs_before_delete(Run.objects.filter(thread_id__in=owned))
        Thread.objects.filter(pk__in=owned).delete()
    thread_checkpoints_delete(thread_ids=owned)
    return len(owned)


THREADS_PRUNE_BATCH_SIZE = 500


def threads_prune_inactive(
    *,
    older_than: datetime,
    dry_run: bool = False,
    batch_size: int = THREADS_PRUNE_BATCH_SIZE,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Delete threads without activity since ``older_than`` and no active run (operators), and
    the idempotency records of stateless runs discarded before then; returns how many threads.

    Least recently updated first, ``batch_size`` threads (with their runs, events and
    checkpoints) per transaction, walking the updated_at index from where the previous batch
    stopped: memory stays that of one batch however many threads are due, and each batch checks
    again, under the runs' locks, that no run became active meanwhile.
    """
    queryset = Thread.objects.inactive_since(older_than)
    if dry_run:
        return queryset.count()
    DiscardedRun.objects.filter(discarded_at__lt=older_than).delete()
    deleted = 0
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        batch = queryset
        if after is not None:
            at, pk = after
            batch = batch.filter(
                Q(updated_at__gt=at) | Q(updated_at=at, thread_id__gt=pk), updated_at__gte=at
            )
        rows = list(batch.order_by("updated_at", "thread_id").values_list("updated_at", "thread_id")[:batch_size])
        if not rows:
            break
        after = rows[-1]
        pks = [pk for _, pk in rows]
        with transaction.atomic():
            lock_runs_before_delete(Run.objects.filter(thread_id__in=pks))
            # A run created since the batch was read keeps its thread.
            gone = list(queryset.filter(pk__in=pks).values_list("pk", flat=True))
            Thread.objects.filter(pk__in=gone).delete()
        thread_checkpoints_delete(thread_ids=gone)
        deleted += len(gone)
        if progress is not None:
            progress(deleted)
    return deleted


def thread_status_now(thread: Thread) -> str:
    """What ``thread``'s status should be now: busy while a run of it is pending or running,
    else its resting status. Callers hold the thread's lock."""
    if Run.objects.filter(thread_id=thread.pk, status__in=RunStatus.active()).exists():
        return ThreadStatus.BUSY
    return thread.resting_status


def thread_refresh_status(*, thread_id: Any) -> None:
    """Recompute ``status`` after a run stopped being active (busy, else the resting status)."""
    with transaction.atomic():
        thread = Thread.objects.select_for_update().filter(pk=thread_id).first()
        if thread is None:
            return
        status = thread_status_now(thread)
        if status != thread.status:
            Thread.objects.filter(pk=thread_id).update(status=status, updated_at=timezone.now())


def temporary_thread_discard(*, thread_id: Any) -> None:
    """Delete a stateless run's temporary thread (and checkpoints) once its result was read.

    Its runs go with it; those created with an Idempotency-Key leave a ``DiscardedRun`` in the
    same transaction, so a retry with the key finds one or the other, never nothing."""
    with transaction.atomic():
        thread = Thread.objects.filter(pk=thread_id, temporary=True).first()
        if thread is None:
            return
        lock_runs_before_delete(Run.objects.filter(thread=thread))
        keyed = Run.objects.filter(thread=thread, idempotency_key__isnull=False)
        DiscardedRun.objects.bulk_create(
            [
                DiscardedRun(
                    run_id=run.pk, owner_id=run.owner_id, thread_id=run.thread_id,
                    idempotency_key=cast(str, run.idempotency_key),  # keyed: not NULL
                    request_hash=run.request_hash,
                    run=DiscardedRun.kept_values(run), result=run_result(run=run, thread=thread),
                )
                for run in keyed
            ],
            ignore_conflicts=True,
        )
        thread.delete()
    thread_checkpoints_delete(thread_ids=[thread_id])

