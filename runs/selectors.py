"""Every read of the runs API: assistants, threads, runs, a thread's state and a run's result.

Reads never write: the system assistants, for one, are made at start-up (``runs.apps``), not by
the first read that looks for them. Each read takes the asking user where ownership matters and
answers the real server's 404 (or 422 for an id that is not a UUID) for what that user may not
see.
"""

from __future__ import annotations

import copy
from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.db.models.fields.json import KeyTransform

from runs.errors import NotFound
from runs.graphs import GraphNotFound, checkpointer, graph_get
from runs.jsonable import interrupt_json, to_json
from runs.models import Assistant, Cron, Run, Thread
from runs.services.inputs import parse_uuid


def json_filter(queryset: QuerySet, field: str, conditions: dict[str, Any] | None) -> QuerySet:
    """Rows whose JSON ``field`` has each key of ``conditions`` equal to its value.

    Key by key rather than ``__contains``, which SQLite lacks. On PostgreSQL the conditions are
    also given as one containment (``@>``, implied by the equalities, so the rows are the same),
    which the GIN index on threads' metadata answers without reading every row of the owner.
    """
    if conditions and connections[queryset.db].vendor == "postgresql":
        queryset = queryset.filter(**{f"{field}__contains": conditions})
    for index, (key, value) in enumerate((conditions or {}).items()):
        alias = f"_{field}_filter_{index}"
        queryset = queryset.alias(**{alias: KeyTransform(key, field)}).filter(**{alias: value})
    return queryset


# --- assistants ----------------------------------------------------------------------------------


def assistant_get(*, user, assistant_id: Any) -> Assistant:
    """An assistant ``user`` may see (its own or a system one); 404 otherwise."""
    pk = parse_uuid(assistant_id, "assistant")
    assistant = Assistant.objects.visible_to(user).filter(pk=pk).first()
    if assistant is None:
        raise NotFound()
    return assistant


def assistants_search(
    *,
    user,
    metadata: dict | None = None,
    graph_id: str | None = None,
    name: str | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> QuerySet:
    """The assistants ``user`` sees (its own and the system ones), filtered and sorted."""
    queryset: QuerySet[Assistant] = Assistant.objects.visible_to(user)
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
    """``user``'s thread; 404 (with ``not_found`` as its message, if given) otherwise."""
    pk = parse_uuid(thread_id, "thread")
    thread = Thread.objects.filter(pk=pk, owner=user).first()
    if thread is None:
        raise NotFound(not_found if not_found is not None else f"Thread with ID {pk} not found")
    return thread


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
    queryset: QuerySet[Thread] = Thread.objects.owned_by(user)
    if ids is not None:
        queryset = queryset.filter(pk__in=[parse_uuid(value, "thread") for value in ids])
    if status:
        queryset = queryset.filter(status=status)
    queryset = json_filter(queryset, "metadata", metadata)
    queryset = json_filter(queryset, "values", values)
    field = {"thread_id": "pk"}.get(sort_by or "created_at", sort_by or "created_at")
    prefix = "" if sort_order == "asc" else "-"
    return queryset.order_by(f"{prefix}{field}", f"{prefix}pk")


# --- crons ---------------------------------------------------------------------------------------


def cron_get(*, user, cron_id: Any) -> Cron:
    """``user``'s cron; 404 otherwise (another user's too)."""
    pk = parse_uuid(cron_id, "cron")
    cron = Cron.objects.owned_by(user).select_related("owner").filter(pk=pk).first()
    if cron is None:
        raise NotFound(f"Cron with ID {pk} not found")
    return cron


def crons_search(
    *,
    user,
    assistant_id: Any = None,
    thread_id: Any = None,
    enabled: bool | None = None,
    metadata: dict | None = None,
    sort_by: str | None = None,
    sort_order: str | None = None,
) -> QuerySet:
    """``user``'s crons matching every filter given, sorted (``created_at`` descending by
    default). The assistant is named by its UUID, as on the real server (a graph id is a 422)."""
    queryset: QuerySet[Cron] = Cron.objects.owned_by(user).select_related("owner")
    if assistant_id is not None:
        queryset = queryset.filter(assistant_id=parse_uuid(assistant_id, "assistant"))
    if thread_id is not None:
        queryset = queryset.filter(thread_id=parse_uuid(thread_id, "thread"))
    if enabled is not None:
        queryset = queryset.filter(enabled=enabled)
    queryset = json_filter(queryset, "metadata", metadata)
    field = {"cron_id": "pk"}.get(sort_by or "created_at", sort_by or "created_at")
    prefix = "" if sort_order == "asc" else "-"
    return queryset.order_by(f"{prefix}{field}", f"{prefix}pk")


# --- runs ----------------------------------------------------------------------------------------


def run_get(*, user, thread_id: Any, run_id: Any) -> Run:
    """``user``'s run on that thread; 404 otherwise."""
    thread_pk = parse_uuid(thread_id, "thread")
    run_pk = parse_uuid(run_id, "run")
    run = Run.objects.filter(pk=run_pk, thread_id=thread_pk, owner=user).first()
    if run is None:
        raise NotFound()
    return run


def runs_list(*, thread: Thread, status: str | None = None) -> QuerySet:
    """A thread's runs, newest first."""
    queryset = Run.objects.filter(thread=thread).order_by("-created_at", "-run_id")
    if status:
        queryset = queryset.filter(status=status)
    return queryset


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


# --- a thread's state, read from its checkpoints -----------------------------------------------

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
                "state": (
                    state_json(task_state)
                    if task_state is not None and not isinstance(task_state, dict)
                    else None
                ),
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

