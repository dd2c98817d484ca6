"""Writes of a thread's state: a new checkpoint from the API (``thread_state_update``) and the
copy of the latest state that the thread row caches for reads and searches."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from runs.errors import BadRequest, Conflict
from runs.models import Run, RunStatus, Thread, ThreadStatus
from runs.selectors import state_json, thread_config, thread_graph


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
    # Here, with the graph loaded: at the top it made every process import langgraph at start-up.
    from langgraph.errors import InvalidUpdateError

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

