"""Every write of the runs API: assistants, threads, thread state, runs and their cancellation.

Thread-level decisions (multitask strategies, the thread's status) are taken with the thread row
locked (``select_for_update``; on SQLite the IMMEDIATE transaction holds the database write lock),
so concurrent run creates on one thread are serialized by the database: with ``reject`` exactly
one of them wins whatever the number of processes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Model, QuerySet
from django.db.models.constants import OnConflict
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from langgraph.errors import InvalidUpdateError

from project.errors import TooManyActive
from runs import dispatch
from runs.errors import (
    MULTITASK_REJECTED,
    NO_MATCHING_RUNS_TO_CANCEL,
    NO_RUNS_TO_CANCEL,
    THREAD_OR_ASSISTANT_NOT_FOUND,
    BadRequest,
    Conflict,
    NotFound,
    Unprocessable,
)
from runs.graphs import (
    GraphNotFound,
    checkpointer,
    graph_get,
    graph_ids,
    system_assistant_id,
    system_assistants_ensure,
)
from runs.jsonable import interrupt_json, to_json
from runs.models import (
    Assistant,
    AssistantVersion,
    CancelAction,
    DiscardedRun,
    IdempotentCreate,
    MultitaskStrategy,
    Run,
    RunStatus,
    Thread,
    ThreadStatus,
    uuid7,
)
from runs.serializers import run_json
from runs.wakeups import run_changed, thread_changed
from runs.worker_sql import can_return, column, prep, table

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=IdempotentCreate)


def parse_uuid(value: Any, what: str) -> uuid.UUID:
    """``value`` as a UUID, or the real server's 422 ``Invalid <what> ID: must be a UUID``."""
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Unprocessable(f"Invalid {what} ID: must be a UUID") from None


def _as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def json_filter(queryset: QuerySet, field: str, conditions: dict[str, Any] | None) -> QuerySet:
    """Rows whose JSON ``field`` has each key of ``conditions`` equal to its value.

    Key by key rather than ``__contains``, which SQLite lacks.
    """
    for index, (key, value) in enumerate((conditions or {}).items()):
        alias = f"_{field}_filter_{index}"
        queryset = queryset.alias(**{alias: KeyTransform(key, field)}).filter(**{alias: value})
    return queryset


# --- limits and idempotency ----------------------------------------------------------------------

IDEMPOTENCY_KEY_MAX_LENGTH = 255


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def check_json_size(field: str, value: Any) -> None:
    """422 when ``value`` (metadata, a run's config) is over ``METADATA_MAX_BYTES`` as JSON: such
    blobs are copied into every run and state read, and searched as JSON."""
    limit = settings.METADATA_MAX_BYTES
    if not limit or value is None:
        return
    size = len(_compact_json(value).encode())
    if size > limit:
        raise Unprocessable(
            f"{field} is too large: {size} bytes as JSON, over the limit of {limit} bytes "
            "(METADATA_MAX_BYTES)."
        )


def _too_many_active(active: int) -> None:
    """429 when ``active`` pending or running runs of the user reach ``RUNS_MAX_ACTIVE_PER_USER``.

    A soft cap: two racing creates may both pass at the edge, which is harmless."""
    limit = settings.RUNS_MAX_ACTIVE_PER_USER
    if limit and active >= limit:
        raise TooManyActive(
            detail=f"You already have {limit} pending or running runs (RUNS_MAX_ACTIVE_PER_USER); "
            "wait for some to finish or cancel them."
        )


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` header and a hash of the request that carried it."""

    key: str
    request_hash: str
    header: str  # the key as the client sent it, for messages

    @classmethod
    def from_header(cls, raw: str | None, *, method: str, path: str, body: Any) -> Idempotency | None:
        if not raw:
            return None
        if len(raw) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise Unprocessable(
                f"Idempotency-Key is too long: {len(raw)} characters, the limit is "
                f"{IDEMPOTENCY_KEY_MAX_LENGTH}."
            )
        digest = hashlib.sha256(_compact_json([method.upper(), path, body]).encode()).hexdigest()
        return cls(key=raw, request_hash=digest, header=raw)

    def batch_item(self, index: int) -> Idempotency:
        """The key of the ``index``-th run of a batch; the hash stays the whole batch's, so any
        change to the batch is a conflict."""
        return Idempotency(key=f"{self.key}/batch/{index}", request_hash=self.request_hash, header=self.header)

    def stored(self) -> dict[str, str]:
        return {"idempotency_key": self.key, "request_hash": self.request_hash}


def _create_once(
    model: type[M], *, owner, idempotency: Idempotency, what: str, create: Callable[[], M],
    gone: Callable[[], Any] | None = None,
) -> tuple[Any, bool]:
    """``create()`` unless ``owner`` already created a ``model`` with this key: then that one (or
    what ``gone()`` kept of it). Returns (object, created). The same key with another request is
    a 409."""

    def original() -> Any:
        existing = model.objects.filter(owner=owner, idempotency_key=idempotency.key).first()
        return existing if existing is not None or gone is None else gone()

    existing = original()
    if existing is None:
        try:
            with transaction.atomic():
                return create(), True
        except (IntegrityError, Conflict):
            # A twin request with the same key may have won a moment ago: the unique index (or
            # the thread's lock, for a multitask reject) made us wait for it. Answer with its object.
            existing = original()
            if existing is None:
                raise
    if existing.request_hash != idempotency.request_hash:
        raise Conflict(
            f"Idempotency-Key '{idempotency.header}' was already used for another request, which "
            f"created {what} {existing.pk}. Repeat that request exactly to get it again, or use a "
            "new key."
        )
    return existing, False


# --- assistants ----------------------------------------------------------------------------------


def _graph_not_found(graph_id: str) -> NotFound:
    return NotFound(f"Graph '{graph_id}' not found. Expected one of: {graph_ids()}")


def assistant_get(*, user, assistant_id: Any) -> Assistant:
    """An assistant ``user`` may see (its own or a system one); 404 otherwise."""
    pk = parse_uuid(assistant_id, "assistant")
    assistant = Assistant.objects.visible_to(user).filter(pk=pk).first()
    if assistant is None and pk in {system_assistant_id(g) for g in graph_ids()}:
        system_assistants_ensure()
        assistant = Assistant.objects.filter(pk=pk).first()
    if assistant is None:
        raise NotFound()
    return assistant


def assistant_for_run(*, user, assistant_id: str) -> Assistant:
    """Resolve a run body's ``assistant_id``: an assistant UUID or a registered graph id."""
    pk = _as_uuid(assistant_id)
    if pk is None:
        if assistant_id not in graph_ids():
            raise Unprocessable(
                f"Invalid assistant: '{assistant_id}'. Must be either:\n"
                f"- A valid assistant UUID, or\n"
                f"- One of the registered graphs: {', '.join(graph_ids())}"
            )
        pk = system_assistant_id(assistant_id)
        assistant = Assistant.objects.filter(pk=pk).first()
        if assistant is None:
            system_assistants_ensure()
            assistant = Assistant.objects.get(pk=pk)
        return assistant
    try:
        return assistant_get(user=user, assistant_id=pk)
    except NotFound:
        raise NotFound(THREAD_OR_ASSISTANT_NOT_FOUND) from None


def _version_from(assistant: Assistant) -> AssistantVersion:
    return AssistantVersion(
        assistant=assistant,
        version=assistant.version,
        graph_id=assistant.graph_id,
        name=assistant.name,
        description=assistant.description,
        config=assistant.config,
        context=assistant.context,
        metadata=assistant.metadata,
        created_at=assistant.updated_at,
    )


def assistant_create(
    *,
    owner,
    graph_id: str,
    assistant_id: Any = None,
    config: dict | None = None,
    context: dict | None = None,
    metadata: dict | None = None,
    name: str | None = None,
    description: str | None = None,
    if_exists: str = "raise",
    idempotency: Idempotency | None = None,
) -> Assistant:
    """Create an assistant (version 1) of a registered graph."""
    if graph_id not in graph_ids():
        raise _graph_not_found(graph_id)
    check_json_size("metadata", metadata)
    pk = parse_uuid(assistant_id, "assistant") if assistant_id is not None else uuid.uuid4()
    existing = Assistant.objects.filter(pk=pk).first()
    if existing is not None:
        if if_exists == "do_nothing" and (existing.owner_id in (None, owner.pk)):
            return existing
        raise Conflict(f"Assistant with ID {pk} already exists")
    now = timezone.now()
    try:
        with transaction.atomic():
            assistant = Assistant.objects.create(
                assistant_id=pk,
                owner=owner,
                graph_id=graph_id,
                name=name or "Untitled",
                description=description,
                config=config or {},
                context=context or {},
                metadata=metadata or {},
                version=1,
                created_at=now,
                updated_at=now,
                **(idempotency.stored() if idempotency else {}),
            )
            _version_from(assistant).save()
    except IntegrityError:
        raise Conflict(f"Assistant with ID {pk} already exists") from None
    return assistant


def assistant_create_idempotent(*, owner, idempotency: Idempotency | None, **fields: Any) -> tuple[Assistant, bool]:
    """``assistant_create``, or the assistant an earlier request with the same key created."""
    if idempotency is None:
        return assistant_create(owner=owner, **fields), True
    return _create_once(
        Assistant, owner=owner, idempotency=idempotency, what="assistant",
        create=lambda: assistant_create(owner=owner, idempotency=idempotency, **fields),
    )


def _own_assistant(user, assistant: Assistant) -> Assistant:
    if assistant.owner_id != user.pk:
        # System assistants are shared by every user; changing one would change it for all.
        raise Conflict(f"Assistant {assistant.pk} is a system assistant and cannot be changed.")
    return assistant


def assistant_update(
    *,
    user,
    assistant: Assistant,
    graph_id: str | None = None,
    config: dict | None = None,
    context: dict | None = None,
    metadata: dict | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Assistant:
    """Save a new version of the assistant and make it current; metadata is merged."""
    _own_assistant(user, assistant)
    if graph_id is not None and graph_id not in graph_ids():
        raise _graph_not_found(graph_id)
    check_json_size("metadata", metadata)
    with transaction.atomic():
        assistant = Assistant.objects.select_for_update().get(pk=assistant.pk)
        latest = assistant.versions.aggregate(latest=Max("version"))["latest"] or assistant.version
        assistant.version = latest + 1
        if graph_id is not None:
            assistant.graph_id = graph_id
        if config is not None:
            assistant.config = config
        if context is not None:
            assistant.context = context
        if metadata is not None:
            assistant.metadata = {**assistant.metadata, **metadata}
            check_json_size("metadata", assistant.metadata)
        if name is not None:
            assistant.name = name
        if description is not None:
            assistant.description = description
        assistant.updated_at = timezone.now()
        assistant.save()
        _version_from(assistant).save()
    return assistant


def assistant_set_latest(*, user, assistant: Assistant, version: int) -> Assistant:
    """Make a saved version current again."""
    _own_assistant(user, assistant)
    saved = assistant.versions.filter(version=version).first()
    if saved is None:
        raise NotFound(f"Version {version} of assistant {assistant.pk} not found")
    Assistant.objects.filter(pk=assistant.pk).update(
        version=saved.version,
        graph_id=saved.graph_id,
        name=saved.name,
        description=saved.description,
        config=saved.config,
        context=saved.context,
        metadata=saved.metadata,
        updated_at=timezone.now(),
    )
    assistant.refresh_from_db()
    return assistant


def assistant_delete(*, user, assistant: Assistant) -> None:
    """Delete an assistant with its versions and runs."""
    _own_assistant(user, assistant)
    assistant.delete()


def assistants_search(
    *,
    user,
    metadata: dict | None = None,
    graph_id: str | None = None,
    name: str | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> QuerySet:
    system_assistants_ensure()
    queryset = Assistant.objects.visible_to(user)
    if graph_id:
        queryset = queryset.filter(graph_id=graph_id)
    if name:
        queryset = queryset.filter(name__icontains=name)
    queryset = json_filter(queryset, "metadata", metadata)
    field = {"assistant_id": "pk"}.get(sort_by or "created_at", sort_by or "created_at")
    prefix = "" if sort_order == "asc" else "-"
    return queryset.order_by(f"{prefix}{field}", f"{prefix}pk")


# --- threads -------------------------------------------------------------------------------------


def thread_get(*, user, thread_id: Any, not_found: str | None = None) -> Thread:
    pk = parse_uuid(thread_id, "thread")
    thread = Thread.objects.filter(pk=pk, owner=user).first()
    if thread is None:
        raise NotFound(not_found if not_found is not None else f"Thread with ID {pk} not found")
    return thread


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
    return _create_once(
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


def _delete_checkpoints_of_threads(thread_ids: Iterable[uuid.UUID]) -> None:
    saver = checkpointer()
    for thread_id in thread_ids:
        saver.delete_thread(str(thread_id))


def _lock_runs_before_delete(runs) -> list:
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
        run_ids = _lock_runs_before_delete(Run.objects.filter(thread_id=thread_id))
        thread.delete()
        thread_changed(thread_id)  # its stream and its runs' streams close
        for run_id in run_ids:
            run_changed(run_id)
    _delete_checkpoints_of_threads([thread_id])


def threads_search(
    *,
    user,
    ids: list | None = None,
    metadata: dict | None = None,
    values: dict | None = None,
    status: str | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> QuerySet:
    queryset = Thread.objects.owned_by(user)
    if ids is not None:
        queryset = queryset.filter(pk__in=[parse_uuid(value, "thread") for value in ids])
    if status:
        queryset = queryset.filter(status=status)
    queryset = json_filter(queryset, "metadata", metadata)
    queryset = json_filter(queryset, "values", values)
    field = {"thread_id": "pk"}.get(sort_by or "created_at", sort_by or "created_at")
    prefix = "" if sort_order == "asc" else "-"
    return queryset.order_by(f"{prefix}{field}", f"{prefix}pk")


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
        _lock_runs_before_delete(Run.objects.filter(thread_id__in=owned))
        Thread.objects.filter(pk__in=owned).delete()
    _delete_checkpoints_of_threads(owned)
    return len(owned)


def threads_prune_inactive(*, older_than: datetime, dry_run: bool = False) -> int:
    """Delete threads without activity since ``older_than`` and no active run (operators), and
    the idempotency records of stateless runs discarded before then."""
    queryset = Thread.objects.inactive_since(older_than)
    pks = list(queryset.values_list("pk", flat=True).distinct())
    if not dry_run:
        DiscardedRun.objects.filter(discarded_at__lt=older_than).delete()
    if not dry_run and pks:
        with transaction.atomic():
            _lock_runs_before_delete(Run.objects.filter(thread_id__in=pks))
            Thread.objects.filter(pk__in=pks).delete()
        _delete_checkpoints_of_threads(pks)
    return len(pks)


# --- thread state --------------------------------------------------------------------------------

EMPTY_STATE: dict[str, Any] = {
    "values": {},
    "next": [],
    "tasks": [],
    "metadata": None,
    "created_at": None,
    "checkpoint": None,
    "parent_checkpoint": None,
    "interrupts": [],
    "checkpoint_id": None,
    "parent_checkpoint_id": None,
}


def _checkpoint_ref(config: dict | None) -> dict | None:
    if not config:
        return None
    configurable = config.get("configurable", {})
    if not configurable.get("checkpoint_id"):
        return None
    return {
        "checkpoint_id": configurable["checkpoint_id"],
        "thread_id": configurable.get("thread_id"),
        "checkpoint_ns": configurable.get("checkpoint_ns", ""),
    }


def state_json(snapshot: Any) -> dict[str, Any]:
    """A langgraph ``StateSnapshot`` as the API's ThreadState."""
    if snapshot is None or not snapshot.metadata and not snapshot.created_at:
        return copy.deepcopy(EMPTY_STATE)
    checkpoint = _checkpoint_ref(snapshot.config)
    parent = _checkpoint_ref(snapshot.parent_config)
    tasks = []
    for task in snapshot.tasks:
        task_state = task.state
        tasks.append(
            {
                "id": task.id,
                "name": task.name,
                "path": to_json(task.path),
                "error": None if task.error is None else str(task.error),
                "interrupts": [interrupt_json(i) for i in task.interrupts],
                "checkpoint": _checkpoint_ref(task_state) if isinstance(task_state, dict) else None,
                "state": state_json(task_state) if task_state is not None and not isinstance(task_state, dict) else None,
                "result": to_json(task.result),
            }
        )
    return {
        "values": to_json(snapshot.values),
        "next": list(snapshot.next),
        "tasks": tasks,
        "metadata": to_json(snapshot.metadata),
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint,
        "parent_checkpoint": parent,
        "interrupts": [interrupt_json(i) for i in snapshot.interrupts],
        "checkpoint_id": checkpoint["checkpoint_id"] if checkpoint else None,
        "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
    }


def thread_graph(thread: Thread):
    """The graph that last ran on ``thread`` (bound to our saver), or None if none ran yet."""
    graph_id = (thread.metadata or {}).get("graph_id")
    if not graph_id:
        return None
    try:
        return graph_get(graph_id, checkpointer=checkpointer())
    except GraphNotFound:
        return None


def thread_config(thread: Thread, checkpoint: dict | None = None) -> dict[str, Any]:
    configurable: dict[str, Any] = {"thread_id": str(thread.pk), "checkpoint_ns": ""}
    for key in ("checkpoint_id", "checkpoint_ns", "checkpoint_map"):
        if checkpoint and checkpoint.get(key) is not None:
            configurable[key] = checkpoint[key]
    return {"configurable": configurable}


def thread_state(*, thread: Thread, checkpoint: dict | None = None, subgraphs: bool = False) -> dict:
    graph = thread_graph(thread)
    if graph is None:
        return copy.deepcopy(EMPTY_STATE)
    snapshot = graph.get_state(thread_config(thread, checkpoint), subgraphs=subgraphs)
    return state_json(snapshot)


def thread_history(
    *,
    thread: Thread,
    limit: int = 10,
    before: dict | None = None,
    metadata: dict | None = None,
    checkpoint: dict | None = None,
) -> list[dict]:
    graph = thread_graph(thread)
    if graph is None:
        return []
    before_config = thread_config(thread, before) if before and before.get("checkpoint_id") else None
    snapshots = graph.get_state_history(
        thread_config(thread, checkpoint), limit=limit, before=before_config, filter=metadata or None
    )
    return [state_json(snapshot) for snapshot in snapshots]


def _thread_interrupts(state: dict) -> dict[str, list]:
    return {task["id"]: task["interrupts"] for task in state["tasks"] if task["interrupts"]}


def thread_state_update(
    *,
    thread: Thread,
    values: Any = None,
    as_node: str | None = None,
    checkpoint: dict | None = None,
) -> dict:
    """Write ``values`` as a new checkpoint (as if ``as_node`` had run); returns its config."""
    graph = thread_graph(thread)
    if graph is None:
        raise BadRequest("Thread has no graph ID.")
    if Run.objects.filter(thread=thread, status=RunStatus.RUNNING).exists():
        raise Conflict("Thread is busy: a run is running. Wait for it or cancel it first.")
    try:
        # The async twin, so that a graph whose branches or writers are async (echo's route, a
        # user's) can be updated too; sync ones run in an executor there.
        new_config = async_to_sync(graph.aupdate_state)(
            thread_config(thread, checkpoint), values, as_node=as_node
        )
    except (InvalidUpdateError, ValueError, KeyError, TypeError) as exc:
        # An unknown as_node, values the state's channels reject, an ambiguous update...
        raise BadRequest(str(exc) or type(exc).__name__) from None
    state = state_json(graph.get_state(thread_config(thread)))
    thread_store_state(thread_id=thread.pk, state=state)
    configurable = new_config["configurable"]
    ref = {
        "thread_id": configurable.get("thread_id"),
        "checkpoint_ns": configurable.get("checkpoint_ns", ""),
        "checkpoint_id": configurable.get("checkpoint_id"),
    }
    return {"checkpoint": ref, "configurable": ref, "checkpoint_id": ref["checkpoint_id"]}


def thread_state_fields(*, state: dict, error: dict | None, now) -> dict[str, Any]:
    """The thread row's fields that cache a run's latest state; ``status`` is the caller's, since
    only it knows whether the thread stays busy (``resting_status`` is what it falls back to)."""
    fields: dict[str, Any] = {
        "interrupts": _thread_interrupts(state),
        "error": error,
        "resting_status": (
            ThreadStatus.ERROR if error else
            ThreadStatus.INTERRUPTED if state["next"] else ThreadStatus.IDLE
        ),
        "has_run": True,
        "state_updated_at": now,
        "updated_at": now,
    }
    if state["checkpoint"]:
        fields["values"] = state["values"]
    return fields


def thread_store_state(*, thread_id: Any, state: dict, error: dict | None = None) -> None:
    """Cache the latest state on the thread row and set its status from it (busy stays busy)."""
    fields = thread_state_fields(state=state, error=error, now=timezone.now())
    with transaction.atomic():
        if not Thread.objects.select_for_update().filter(pk=thread_id).exists():
            return
        busy = Run.objects.filter(thread_id=thread_id, status__in=RunStatus.active()).exists()
        fields["status"] = ThreadStatus.BUSY if busy else fields["resting_status"]
        Thread.objects.filter(pk=thread_id).update(**fields)


def _thread_status(thread: Thread) -> str:
    if Run.objects.filter(thread_id=thread.pk, status__in=RunStatus.active()).exists():
        return ThreadStatus.BUSY
    return thread.resting_status


def thread_refresh_status(*, thread_id: Any) -> None:
    """Recompute ``status`` after a run stopped being active (busy, else the resting status)."""
    with transaction.atomic():
        thread = Thread.objects.select_for_update().filter(pk=thread_id).first()
        if thread is None:
            return
        status = _thread_status(thread)
        if status != thread.status:
            Thread.objects.filter(pk=thread_id).update(status=status, updated_at=timezone.now())


# --- runs ----------------------------------------------------------------------------------------


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


# --- a run create's statements, written out ------------------------------------------------------
#
# Creating a run is the API's hottest write. Composing its statements with the ORM (filters, the
# insert compiler, Model.save) cost the server more CPU than the database spent running them, so
# they are written out once from the models' tables and columns with ``runs.worker_sql``'s helpers,
# as the worker's statements are; values still go through each field's own ``get_db_prep_save``.


@cache
def _insert_sql(model: type[Model], vendor: str, ignore_conflicts: bool) -> str:
    on_conflict = OnConflict.IGNORE if ignore_conflicts else None
    fields = model._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    suffix = connection.ops.on_conflict_suffix_sql(fields, on_conflict, None, None)
    return (
        f"{connection.ops.insert_statement(on_conflict=on_conflict)} {table(model)} ({columns}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) {suffix}"
    ).rstrip()


def _insert_params(obj: Model, db: Any) -> list[Any]:
    """``obj``'s column values for ``_insert``, ready for the database. Worth computing before
    the transaction: encoding a run's JSON fields inside it held SQLite's one write lock longer."""
    return [field.get_db_prep_save(field.pre_save(obj, True), db) for field in type(obj)._meta.concrete_fields]


def _insert(cursor: Any, obj: Model, *, ignore_conflicts: bool = False, params: list[Any] | None = None) -> None:
    """INSERT ``obj`` with all its columns, as ``save()`` would (the runs models have no signal
    receivers to miss); ``params`` from ``_insert_params`` if already computed. ``cursor.db``
    rather than the ``connection`` proxy: each attribute read through that is a lookup of the
    thread's connection."""
    db = cursor.db
    cursor.execute(
        _insert_sql(type(obj), db.vendor, ignore_conflicts),
        _insert_params(obj, db) if params is None else params,
    )
    obj._state.adding = False
    obj._state.db = db.alias


def _run_probes_sql(count_active: bool) -> str:
    """The owner's pending and running runs (0 when uncapped), and whether the run's assistant is
    still there."""
    active = (
        f"(SELECT COUNT(*) FROM {table(Run)} WHERE {column(Run, 'owner')} = %s "
        f"AND {column(Run, 'status')} IN ({', '.join(['%s'] * len(RunStatus.active()))}))"
        if count_active else "0"
    )
    assistant = (
        f"EXISTS (SELECT 1 FROM {table(Assistant)} WHERE {column(Assistant, 'assistant_id')} = %s)"
    )
    return f"{active}, {assistant}"


def _run_probes_params(owner: Any, assistant: Assistant, count_active: bool) -> list[Any]:
    active = [owner.pk, *RunStatus.active()] if count_active else []
    return [*active, prep(Assistant, "assistant_id", assistant.pk)]


@cache
def _run_probes_only_sql(vendor: str, count_active: bool) -> str:
    return f"SELECT {_run_probes_sql(count_active)}"


@cache
def _thread_busy_sql(vendor: str, count_active: bool, returning: bool) -> str:
    """Marks an owner's thread busy; with ``returning``, also answers its metadata and the run's
    probes. The UPDATE locks the row, as ``select_for_update`` did, until the run is in."""
    update = (
        f"UPDATE {table(Thread)} SET {column(Thread, 'status')} = %s, "
        f"{column(Thread, 'updated_at')} = %s "
        f"WHERE {column(Thread, 'thread_id')} = %s AND {column(Thread, 'owner')} = %s"
    )
    if not returning:
        return update
    return f"{update} RETURNING {column(Thread, 'metadata')}, {_run_probes_sql(count_active)}"


@cache
def _thread_read_sql(vendor: str, count_active: bool) -> str:
    """``_thread_busy_sql``'s answer without RETURNING (SQLite before 3.35), read first."""
    return (
        f"SELECT {column(Thread, 'metadata')}, {_run_probes_sql(count_active)} FROM {table(Thread)} "
        f"WHERE {column(Thread, 'thread_id')} = %s AND {column(Thread, 'owner')} = %s"
    )


@cache
def _thread_metadata_sql(vendor: str) -> str:
    return (
        f"UPDATE {table(Thread)} SET {column(Thread, 'metadata')} = %s "
        f"WHERE {column(Thread, 'thread_id')} = %s"
    )


# graph id -> its system assistant as read once. The API never changes a system assistant (the
# admin shows them read-only), and one deleted is made again the same by system_assistants_ensure,
# so the copy stays right; each run create checks that the row is still there in the statement
# that locks its thread. It spares a run create by graph id (the SDK's usual way) a read.
_system_assistants: dict[str, Assistant] = {}


def _run_assistant(*, user, assistant_id: str) -> Assistant:
    """``assistant_for_run``, with the system assistants of graph ids kept per process."""
    if _as_uuid(assistant_id) is not None or assistant_id not in graph_ids():
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
    stateless: bool, now: datetime,
) -> None:
    """Lock the run's thread and mark it busy with the run's graph and assistant in its metadata,
    creating it first when asked (a stateless run's is new and temporary): 429 over the
    active-runs cap, then 404 when the thread is not the owner's."""
    db, count_active = cursor.db, bool(settings.RUNS_MAX_ACTIVE_PER_USER)
    probes = _run_probes_params(owner, assistant, count_active)
    assigned = {"graph_id": assistant.graph_id, "assistant_id": str(assistant.pk)}
    if stateless:
        cursor.execute(_run_probes_only_sql(db.vendor, count_active), probes)
        active, assistant_exists = cursor.fetchone()
        _too_many_active(active)
        _assistant_still_there(assistant, assistant_exists)
        thread = Thread(
            thread_id=thread_pk, owner=owner, temporary=True, status=ThreadStatus.BUSY,
            metadata=assigned, created_at=now, updated_at=now,
        )
        _insert(cursor, thread)
        return
    if create:
        # INSERT .. ON CONFLICT DO NOTHING: concurrent creates of one thread id never fail.
        _insert(cursor, Thread(thread_id=thread_pk, owner=owner), ignore_conflicts=True)
    where = [prep(Thread, "thread_id", thread_pk), owner.pk]
    busy = [ThreadStatus.BUSY, prep(Thread, "updated_at", now), *where]
    returning = can_return()
    if returning:
        cursor.execute(_thread_busy_sql(db.vendor, count_active, True), busy + probes)
        row = cursor.fetchone()
    else:
        cursor.execute(_thread_read_sql(db.vendor, count_active), probes + where)
        row = cursor.fetchone()
        if row is not None:
            cursor.execute(_thread_busy_sql(db.vendor, count_active, False), busy)
    if row is None:
        cursor.execute(_run_probes_only_sql(db.vendor, count_active), probes)
        _too_many_active(cursor.fetchone()[0])
        raise NotFound(THREAD_OR_ASSISTANT_NOT_FOUND)
    raw_metadata, active, assistant_exists = row
    _too_many_active(active)
    _assistant_still_there(assistant, assistant_exists)
    metadata_field = Thread._meta.get_field("metadata")
    metadata = metadata_field.from_db_value(raw_metadata, None, db) or {}
    merged = {**metadata, **assigned}
    if merged != metadata:  # the same assistant as last time leaves it as it is
        cursor.execute(
            _thread_metadata_sql(db.vendor),
            [metadata_field.get_db_prep_save(merged, db), where[0]],
        )


def run_create(
    *,
    owner,
    body: dict,
    thread_id: Any = None,
    on_completion: str = "",
    idempotency: Idempotency | None = None,
) -> Run:
    """Create a run from a validated RunCreate body; ``thread_id=None`` makes a stateless run on a
    new temporary thread. Applies the multitask strategy against the thread's active runs."""
    check_json_size("metadata", body.get("metadata"))
    check_json_size("config", body.get("config"))
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
        metadata=body.get("metadata") or {},
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
    run_params = _insert_params(run, connection)
    queued = dispatch.run_task_package(run_id)

    with transaction.atomic():
        with connection.cursor() as cursor:
            _thread_for_run(
                cursor, owner=owner, thread_pk=thread_pk, assistant=assistant,
                create=create_thread, stateless=stateless, now=now,
            )
        # enqueue queues behind whatever is active: only the other strategies look at it.
        inflight = [] if strategy == MultitaskStrategy.ENQUEUE else list(
            Run.objects.filter(thread_id=thread_pk, status__in=RunStatus.active()).order_by("created_at")
        )
        if inflight and strategy == MultitaskStrategy.REJECT:
            raise Conflict(MULTITASK_REJECTED)
        with connection.cursor() as cursor:
            _insert(cursor, run, params=run_params)
        if inflight and strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK):
            for other in inflight:
                _cancel_locked(run=other, action=strategy)
        dispatch.run_enqueue_on_commit(run.pk, package=queued)
    return run


def run_create_idempotent(
    *, owner, body: dict, idempotency: Idempotency | None, thread_id: Any = None, on_completion: str = ""
) -> tuple[Run, bool]:
    """``run_create``, or the run an earlier request with the same key created (whatever its
    status now): a ``Run``, or a ``DiscardedRun`` once a stateless run went with its thread."""
    if idempotency is None:
        return run_create(owner=owner, body=body, thread_id=thread_id, on_completion=on_completion), True
    return _create_once(
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


def run_get(*, user, thread_id: Any, run_id: Any) -> Run:
    thread_pk = parse_uuid(thread_id, "thread")
    run_pk = parse_uuid(run_id, "run")
    run = Run.objects.filter(pk=run_pk, thread_id=thread_pk, owner=user).first()
    if run is None:
        raise NotFound()
    return run


def runs_list(*, thread: Thread, status: str | None = None) -> QuerySet:
    queryset = Run.objects.filter(thread=thread).order_by("-created_at", "-run_id")
    if status:
        queryset = queryset.filter(status=status)
    return queryset


def _cancel_locked(*, run: Run, action: str) -> bool:
    """Cancel one run inside a transaction holding its thread's lock; True if it was active.

    A pending run ends at once (``interrupted``, or deleted for a rollback). A running one gets
    ``cancel_action`` and its worker stops the graph within its cancel-check interval.
    """
    now = timezone.now()
    pending = Run.objects.filter(pk=run.pk, status=RunStatus.PENDING)
    if action == CancelAction.ROLLBACK:
        if pending.delete()[0]:
            run_changed(run.pk)  # its stream readers close
            return True
    elif pending.update(status=RunStatus.INTERRUPTED, ended_at=now, updated_at=now):
        run_changed(run.pk)
        return True
    return bool(
        Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
            cancel_action=action, cancel_requested_at=now, updated_at=now
        )
    )


def runs_cancel(*, runs: Iterable[Run], action: str = CancelAction.INTERRUPT) -> list[Run]:
    """Cancel the active ones among ``runs``; returns those that were cancelled."""
    cancelled = []
    by_thread: dict[uuid.UUID, list[Run]] = {}
    for run in runs:
        by_thread.setdefault(run.thread_id, []).append(run)
    for thread_id, thread_runs in by_thread.items():
        with transaction.atomic():
            if not Thread.objects.select_for_update().filter(pk=thread_id).exists():
                continue
            for run in thread_runs:
                if _cancel_locked(run=run, action=action):
                    cancelled.append(run)
            status = _thread_status(Thread.objects.get(pk=thread_id))
            Thread.objects.filter(pk=thread_id).update(status=status)
            transaction.on_commit(lambda thread_id=thread_id: dispatch.thread_dispatch_next(thread_id))
    return cancelled


def run_cancel(*, user, thread_id: Any, run_id: Any, action: str = CancelAction.INTERRUPT) -> Run:
    thread_pk = parse_uuid(thread_id, "thread")
    run_pk = parse_uuid(run_id, "run")
    run = Run.objects.filter(pk=run_pk, thread_id=thread_pk, owner=user).first()
    if run is None:
        raise NotFound(NO_RUNS_TO_CANCEL)
    if not runs_cancel(runs=[run], action=action):
        raise NotFound(NO_MATCHING_RUNS_TO_CANCEL)
    return run


def runs_cancel_many(
    *,
    user,
    thread_id: Any = None,
    run_ids: list | None = None,
    status: str | None = None,
    action: str = CancelAction.INTERRUPT,
) -> int:
    """Bulk cancel: the given runs of a thread, or every run of ``user`` in ``status``."""
    if status is not None and (thread_id is not None or run_ids is not None):
        raise Unprocessable(
            "When providing a 'status', 'thread_id' and 'run_ids' must be omitted. "
            "Provide either a status or a thread_id and run_ids."
        )
    queryset = Run.objects.filter(owner=user)
    if status is not None:
        statuses = RunStatus.active() if status == "all" else (status,)
        queryset = queryset.filter(status__in=statuses)
    else:
        if thread_id is None or not run_ids:
            raise Unprocessable("Provide either a status or a thread_id and run_ids.")
        queryset = queryset.filter(
            thread_id=parse_uuid(thread_id, "thread"),
            pk__in=[parse_uuid(value, "run") for value in run_ids],
        )
    runs = list(queryset.filter(status__in=RunStatus.active()))
    if not runs and status is None:
        raise NotFound(NO_RUNS_TO_CANCEL)
    return len(runs_cancel(runs=runs, action=action))


def run_delete(*, run: Run) -> None:
    """Delete a run and its checkpoints. A running run's worker sees the row vanish and stops."""
    thread_id, run_id = run.thread_id, run.pk
    with transaction.atomic():
        Thread.objects.select_for_update().filter(pk=thread_id).exists()
        _lock_runs_before_delete(Run.objects.filter(pk=run_id))
        if not Run.objects.filter(pk=run_id).delete()[0]:
            raise NotFound("Run not found")
        run_changed(run_id, thread_id)
        thread = Thread.objects.filter(pk=thread_id).first()
        if thread is not None:
            Thread.objects.filter(pk=thread_id).update(status=_thread_status(thread))
        transaction.on_commit(lambda: dispatch.thread_dispatch_next(thread_id))
    run_delete_checkpoints(run_ids=[run_id])


def run_delete_checkpoints(*, run_ids: list) -> None:
    try:
        checkpointer().delete_for_runs([str(run_id) for run_id in run_ids])
    except NotImplementedError:
        logger.warning("the checkpointer cannot delete checkpoints by run; kept for %s", run_ids)


# --- results -------------------------------------------------------------------------------------


def run_result(*, run: Run | None, thread: Thread | None) -> dict:
    """The body of /wait and /join for a finished (or vanished) run."""
    if run is None:
        return {"__error__": {"error": "HTTPException", "message": "404: Run not found"}}
    if run.result is not None:
        return run.result
    if thread is not None and thread.values is not None:
        return thread.values
    return {}


def run_finished_body(*, run_id: Any, thread_id: Any) -> dict:
    run = Run.objects.filter(pk=run_id).first()
    thread = Thread.objects.filter(pk=thread_id).first()
    return run_result(run=run, thread=thread)


def temporary_thread_discard(*, thread_id: Any) -> None:
    """Delete a stateless run's temporary thread (and checkpoints) once its result was read.

    Its runs go with it; those created with an Idempotency-Key leave a ``DiscardedRun`` in the
    same transaction, so a retry with the key finds one or the other, never nothing."""
    with transaction.atomic():
        thread = Thread.objects.filter(pk=thread_id, temporary=True).first()
        if thread is None:
            return
        _lock_runs_before_delete(Run.objects.filter(thread=thread))
        keyed = Run.objects.filter(thread=thread, idempotency_key__isnull=False)
        DiscardedRun.objects.bulk_create(
            [
                DiscardedRun(
                    run_id=run.pk, owner_id=run.owner_id, thread_id=run.thread_id,
                    idempotency_key=run.idempotency_key, request_hash=run.request_hash,
                    run=run_json(run), result=run_result(run=run, thread=thread),
                )
                for run in keyed
            ],
            ignore_conflicts=True,
        )
        thread.delete()
    _delete_checkpoints_of_threads([thread_id])

