"""Writes of runs: create (idempotent, by assistant id or graph id, on a thread or stateless),
take over a stateless run's temporary thread, delete.

A run create decides against its thread with the thread row locked (``select_for_update``; on
SQLite the IMMEDIATE transaction holds the database write lock), so concurrent run creates on
one thread are serialized by the database: with ``reject`` exactly one of them wins whatever the
number of processes.
"""

from __future__ import annotations

import copy
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from project.api.errors import TooManyActive
from project.telemetry import job_created
from runs import dispatch, statements
from runs.completion import run_webhook_check
from runs.errors import (
    MULTITASK_REJECTED,
    THREAD_OR_ASSISTANT_NOT_FOUND,
    BadRequest,
    Conflict,
    NotFound,
)
from runs.graphs import checkpointer, graph_ids, system_assistants_ensure
from runs.models import (
    Assistant,
    DiscardedRun,
    MultitaskStrategy,
    Run,
    RunStatus,
    Thread,
    ThreadStatus,
    uuid7,
)
from runs.services.assistants import assistant_for_run
from runs.services.cancel import run_cancel_locked
from runs.services.idempotency import Idempotency, create_once
from runs.services.inputs import check_json_size, parse_uuid, uuid_or_none
from runs.services.threads import lock_runs_before_delete, thread_status_now
from runs.wakeups import run_changed

logger = logging.getLogger(__name__)


def _too_many_active(active: int) -> None:
    """429 when ``active`` pending or running runs of the user reach ``RUNS_MAX_ACTIVE_PER_USER``.

    A soft cap: two racing creates may both pass at the edge, which is harmless."""
    limit = settings.RUNS_MAX_ACTIVE_PER_USER
    if limit and active >= limit:
        raise TooManyActive(
            detail=f"You already have {limit} pending or running runs (RUNS_MAX_ACTIVE_PER_USER); "
            "wait for some to finish or cancel them."
        )


def _stream_modes(value: Any) -> list[str]:
    if value is None:
        return ["values"]
    if isinstance(value, str):
        return [value]
    return list(dict.fromkeys(value)) or ["values"]


def _run_kwargs(
    *, body: dict, run_id: uuid.UUID, thread_id: uuid.UUID, assistant: Assistant, owner,
    temporary: bool, after_seconds: float,
) -> dict[str, Any]:
    request_config = copy.deepcopy(body.get("config") or {})
    configurable = {
        **(assistant.config.get("configurable") or {}),
        **(request_config.get("configurable") or {}),
    }
    checkpoint = body.get("checkpoint") or {}
    for key in ("checkpoint_id", "checkpoint_ns", "checkpoint_map"):
        if checkpoint.get(key) is not None:
            configurable[key] = checkpoint[key]
    if body.get("checkpoint_id"):
        configurable["checkpoint_id"] = body["checkpoint_id"]
    configurable.update(
        {
            "run_id": str(run_id),
            "thread_id": str(thread_id),
            "graph_id": assistant.graph_id,
            "assistant_id": str(assistant.pk),
            "user_id": getattr(owner, "username", "") or "",
            "__after_seconds__": after_seconds,
        }
    )
    config = {**copy.deepcopy(assistant.config), **request_config, "configurable": configurable}
    config["metadata"] = {
        **(request_config.get("metadata") or {}),
        **(body.get("metadata") or {}),
        "graph_id": assistant.graph_id,
        "assistant_id": str(assistant.pk),
        "run_id": str(run_id),
        "thread_id": str(thread_id),
        "user_id": configurable["user_id"],
    }
    context = {**(assistant.context or {}), **(body.get("context") or {})}
    return {
        "input": body.get("input"),
        "command": body.get("command"),
        "config": config,
        "context": context,
        "stream_mode": _stream_modes(body.get("stream_mode")),
        "interrupt_before": body.get("interrupt_before"),
        "interrupt_after": body.get("interrupt_after"),
        "webhook": body.get("webhook"),
        "feedback_keys": body.get("feedback_keys"),
        "temporary": temporary,
        "subgraphs": bool(body.get("stream_subgraphs", False)),
        "resumable": bool(body.get("stream_resumable", False)),
        "checkpoint_during": bool(body.get("checkpoint_during", True)),
        "durability": body.get("durability") or "async",
    }


# graph id -> its system assistant as read once. The API never changes a system assistant (the
# admin shows them read-only), and one deleted is made again the same by system_assistants_ensure,
# so the copy stays right; each run create checks that the row is still there in the statement
# that locks its thread. It spares a run create by graph id (the SDK's usual way) a read.
_system_assistants: dict[str, Assistant] = {}


def _run_assistant(*, user, assistant_id: str) -> Assistant:
    """``assistant_for_run``, with the system assistants of graph ids kept per process."""
    if uuid_or_none(assistant_id) is not None or assistant_id not in graph_ids():
        return assistant_for_run(user=user, assistant_id=assistant_id)
    assistant = _system_assistants.get(assistant_id)
    if assistant is None:
        assistant = _system_assistants[assistant_id] = assistant_for_run(user=user, assistant_id=assistant_id)
    return assistant


def _assistant_still_there(assistant: Assistant, exists: Any) -> None:
    if exists:
        return
    if assistant.owner_id is not None:  # deleted since it was read
        raise NotFound(THREAD_OR_ASSISTANT_NOT_FOUND)
    system_assistants_ensure()  # a system one is made again, the same


def _thread_for_run(
    cursor: Any, *, owner, thread_pk: uuid.UUID, assistant: Assistant, create: bool,
    stateless: bool, now: datetime, thread_metadata: dict | None = None,
) -> dict[str, Any]:
    """Lock the run's thread and mark it busy with the run's graph and assistant in its metadata,
    creating it first when asked (a stateless run's is new and temporary): 429 over the
    active-runs cap, then 404 when the thread is not the owner's. Returns the thread's metadata
    as it was before."""
    db, count_active = cursor.db, bool(settings.RUNS_MAX_ACTIVE_PER_USER)
    probes = statements.run_probes_params(owner, assistant, count_active)
    assigned = {"graph_id": assistant.graph_id, "assistant_id": str(assistant.pk)}
    if stateless:
        cursor.execute(statements.run_probes_only_sql(db.vendor, count_active), probes)
        active, assistant_exists = cursor.fetchone()
        _too_many_active(active)
        _assistant_still_there(assistant, assistant_exists)
        thread = Thread(
            thread_id=thread_pk, owner=owner, temporary=True, status=ThreadStatus.BUSY,
            metadata={**(thread_metadata or {}), **assigned}, created_at=now, updated_at=now,
        )
        statements.insert(cursor, thread)
        return thread_metadata or {}
    if create:
        # INSERT .. ON CONFLICT DO NOTHING: concurrent creates of one thread id never fail.
        statements.insert(cursor, Thread(thread_id=thread_pk, owner=owner), ignore_conflicts=True)
    where = [statements.prep(Thread, "thread_id", thread_pk), owner.pk]
    busy = [ThreadStatus.BUSY, statements.prep(Thread, "updated_at", now), *where]
    returning = statements.can_return()
    if returning:
        cursor.execute(statements.thread_busy_sql(db.vendor, count_active, True), busy + probes)
        row = cursor.fetchone()
    else:
        cursor.execute(statements.thread_read_sql(db.vendor, count_active), probes + where)
        row = cursor.fetchone()
        if row is not None:
            cursor.execute(statements.thread_busy_sql(db.vendor, count_active, False), busy)
    if row is None:
        cursor.execute(statements.run_probes_only_sql(db.vendor, count_active), probes)
        _too_many_active(cursor.fetchone()[0])
        raise NotFound(THREAD_OR_ASSISTANT_NOT_FOUND)
    raw_metadata, active, assistant_exists = row
    _too_many_active(active)
    _assistant_still_there(assistant, assistant_exists)
    metadata_field = Thread._meta.get_field("metadata")
    # The stubs want an expression; JSONField only looks at it for key transforms.
    metadata = metadata_field.from_db_value(raw_metadata, None, db) or {}  # type: ignore[arg-type]
    merged = {**metadata, **assigned}
    if merged != metadata:  # the same assistant as last time leaves it as it is
        cursor.execute(
            statements.thread_metadata_sql(db.vendor),
            [metadata_field.get_db_prep_save(merged, db), where[0]],
        )
    return metadata


# Where a run's metadata is among its INSERT's parameters (``statements.insert_params``).
_METADATA_COLUMN = [field.name for field in Run._meta.concrete_fields].index("metadata")


def _run_metadata(body: dict, assistant: Assistant, thread_metadata: dict, *, stateless: bool) -> dict:
    """A run's metadata as the real server makes it: the assistant's, the thread's, the request's,
    then the graph and assistant ids (a stateless run: the assistant id only)."""
    assigned = {"assistant_id": str(assistant.pk)}
    if not stateless:
        assigned = {"graph_id": assistant.graph_id, **assigned}
    return {**(assistant.metadata or {}), **thread_metadata, **(body.get("metadata") or {}), **assigned}


def run_create(
    *,
    owner,
    body: dict,
    thread_id: Any = None,
    on_completion: str = "",
    idempotency: Idempotency | None = None,
    thread_metadata: dict | None = None,
) -> Run:
    """Create a run from a validated RunCreate body; ``thread_id=None`` makes a stateless run on a
    new temporary thread (with ``thread_metadata``: a stateless cron's). Applies the multitask
    strategy against the thread's active runs."""
    check_json_size("metadata", body.get("metadata"))
    check_json_size("config", body.get("config"))
    if body.get("webhook") is not None:
        run_webhook_check(body["webhook"])
    assistant = _run_assistant(user=owner, assistant_id=body["assistant_id"])
    configurable = (body.get("config") or {}).get("configurable")
    if configurable and body.get("context"):
        raise BadRequest(
            "Cannot specify both configurable and context. Prefer setting context alone. "
            "Context was introduced in LangGraph 0.6.0 and is the long term planned replacement "
            "for configurable."
        )
    stateless = thread_id is None
    command = body.get("command") or None
    if stateless and command and command.get("resume") is not None:
        raise BadRequest("You must provide a thread_id when resuming.")
    strategy = body.get("multitask_strategy") or MultitaskStrategy.ENQUEUE
    after_seconds = float(body.get("after_seconds") or 0)
    thread_pk = uuid7() if stateless else parse_uuid(thread_id, "thread")
    create_thread = stateless or body.get("if_not_exists") == "create"
    run_id = uuid7()
    now = timezone.now()
    # Everything that does not depend on what the transaction reads is made before it: on SQLite
    # the transaction holds the database's one write lock, wanted by every worker too.
    run = Run(
        run_id=run_id,
        thread_id=thread_pk,
        assistant_id=assistant.pk,
        owner=owner,
        status=RunStatus.PENDING,
        metadata=_run_metadata(body, assistant, {}, stateless=stateless),
        kwargs=_run_kwargs(
            body=body, run_id=run_id, thread_id=thread_pk, assistant=assistant, owner=owner,
            temporary=stateless, after_seconds=after_seconds,
        ),
        multitask_strategy=strategy,
        created_at=now + timedelta(seconds=after_seconds) if after_seconds > 0 else now,
        updated_at=now,
        on_completion=on_completion,
        **(idempotency.stored() if idempotency else {}),
    )
    run_params = statements.insert_params(run, connection)
    queued = dispatch.run_task_package(run_id)

    with transaction.atomic():
        with connection.cursor() as cursor:
            metadata_before = _thread_for_run(
                cursor, owner=owner, thread_pk=thread_pk, assistant=assistant,
                create=create_thread, stateless=stateless, now=now, thread_metadata=thread_metadata,
            )
        if metadata_before:
            # The thread's metadata joins the run's, as read under the thread's lock.
            run.metadata = _run_metadata(body, assistant, metadata_before, stateless=stateless)
            run_params[_METADATA_COLUMN] = Run._meta.get_field("metadata").get_db_prep_save(
                run.metadata, connection
            )
        # enqueue queues behind whatever is active: only the other strategies look at it.
        inflight = [] if strategy == MultitaskStrategy.ENQUEUE else list(
            Run.objects.filter(thread_id=thread_pk, status__in=RunStatus.active()).order_by("created_at")
        )
        if inflight and strategy == MultitaskStrategy.REJECT:
            raise Conflict(MULTITASK_REJECTED)
        with connection.cursor() as cursor:
            statements.insert(cursor, run, params=run_params)
        if inflight and strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK):
            for other in inflight:
                run_cancel_locked(run=other, action=strategy)
        dispatch.run_enqueue_on_commit(run.pk, package=queued)
    job_created(kind="run", target=assistant.graph_id)
    return run


def run_create_idempotent(
    *, owner, body: dict, idempotency: Idempotency | None, thread_id: Any = None, on_completion: str = ""
) -> tuple[Run, bool]:
    """``run_create``, or the run an earlier request with the same key created (whatever its
    status now): a ``Run``, or a ``DiscardedRun`` once a stateless run went with its thread."""
    if idempotency is None:
        return run_create(owner=owner, body=body, thread_id=thread_id, on_completion=on_completion), True
    return create_once(
        Run, owner=owner, idempotency=idempotency, what="run",
        create=lambda: run_create(
            owner=owner, body=body, thread_id=thread_id, on_completion=on_completion,
            idempotency=idempotency,
        ),
        gone=lambda: DiscardedRun.objects.filter(owner=owner, idempotency_key=idempotency.key).first(),
    )


def run_take_temporary_thread(*, run: Run) -> bool:
    """A replayed stateless /wait or /stream whose first response is gone (it left the temporary
    thread to be deleted when the run ends): keep the thread for this response, which then
    deletes it after reading. True when this response took it over."""
    return bool(
        Run.objects.filter(pk=run.pk, status__in=RunStatus.active(), on_completion="delete").update(
            on_completion=""
        )
    )


def run_delete(*, run: Run) -> None:
    """Delete a run and its checkpoints. A running run's worker sees the row vanish and stops."""
    thread_id, run_id = run.thread_id, run.pk
    with transaction.atomic():
        Thread.objects.select_for_update().filter(pk=thread_id).exists()
        lock_runs_before_delete(Run.objects.filter(pk=run_id))
        if not Run.objects.filter(pk=run_id).delete()[0]:
            raise NotFound("Run not found")
        run_changed(run_id, thread_id)
        thread = Thread.objects.filter(pk=thread_id).first()
        if thread is not None:
            Thread.objects.filter(pk=thread_id).update(status=thread_status_now(thread))
        transaction.on_commit(lambda: dispatch.thread_dispatch_next(thread_id))
    run_delete_checkpoints(run_ids=[run_id])


def run_delete_checkpoints(*, run_ids: list) -> None:
    try:
        checkpointer().delete_for_runs([str(run_id) for run_id in run_ids])
    except NotImplementedError:
        logger.warning("the checkpointer cannot delete checkpoints by run; kept for %s", run_ids)

