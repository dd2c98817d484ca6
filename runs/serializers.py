"""JSON shapes of the runs API, field for field and in the order the real server returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runs.errors import Unprocessable
from runs.models import Assistant, AssistantVersion, Cron, Run, Thread

ASSISTANT_FIELDS = (
    "assistant_id", "graph_id", "config", "context", "metadata", "name", "created_at",
    "updated_at", "version", "description",
)
THREAD_FIELDS = (
    "thread_id", "created_at", "updated_at", "state_updated_at", "metadata", "status", "config",
    "values", "error", "interrupts",
)
RUN_FIELDS = (
    "run_id", "thread_id", "assistant_id", "metadata", "status", "kwargs", "multitask_strategy",
    "created_at", "updated_at", "langsmith_session_name",
)

# In the order of the real server's bodies (langgraph-behaviour.md §2.8).
CRON_FIELDS = (
    "cron_id", "assistant_id", "thread_id", "user_id", "end_time", "schedule", "timezone",
    "payload", "next_run_date", "metadata", "on_run_completed", "enabled", "created_at",
    "updated_at",
)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="microseconds")


def check_select(select: list[str] | None, allowed: tuple[str, ...]) -> list[str] | None:
    """The requested ``select`` columns, or the real server's 422 for unknown ones."""
    if not select:
        return None
    unknown = [column for column in select if column not in allowed]
    if unknown:
        raise Unprocessable(f"Invalid select columns: {unknown}. Expected: {set(allowed)}")
    return list(select)


def _selected(body: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if not select:
        return body
    return {key: value for key, value in body.items() if key in select}


def assistant_json(assistant: Assistant, select: list[str] | None = None) -> dict[str, Any]:
    body = {
        "assistant_id": str(assistant.assistant_id),
        "graph_id": assistant.graph_id,
        "config": assistant.config,
        "context": assistant.context,
        "metadata": assistant.metadata,
        "name": assistant.name,
        "created_at": iso(assistant.created_at),
        "updated_at": iso(assistant.updated_at),
        "version": assistant.version,
        "description": assistant.description,
    }
    return _selected(body, select)


def assistant_version_json(version: AssistantVersion) -> dict[str, Any]:
    return {
        "assistant_id": str(version.assistant_id),
        "graph_id": version.graph_id,
        "config": version.config,
        "context": version.context,
        "metadata": version.metadata,
        "name": version.name,
        "description": version.description,
        "created_at": iso(version.created_at),
        "version": version.version,
    }


def thread_json(thread: Thread, select: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "thread_id": str(thread.thread_id),
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.updated_at),
        "state_updated_at": iso(thread.state_updated_at),
        "metadata": thread.metadata,
        "status": thread.status,
        "config": thread.config,
        "values": thread.values,
    }
    if thread.has_run:
        # The real server adds these once a run has touched the thread.
        body["error"] = thread.error
        body["interrupts"] = thread.interrupts
    return _selected(body, select)


def run_json(run: Run, select: list[str] | None = None) -> dict[str, Any]:
    body = {
        "run_id": str(run.run_id),
        "thread_id": str(run.thread_id),
        "assistant_id": str(run.assistant_id),
        "metadata": run.metadata,
        "status": run.status,
        "kwargs": run.kwargs,
        "multitask_strategy": run.multitask_strategy,
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "langsmith_session_name": None,
    }
    return _selected(body, select)


def cron_json(cron: Cron, select: list[str] | None = None) -> dict[str, Any]:
    """A cron as the real server shows it: a stateless cron has no ``thread_id`` (each run gets a
    new thread), a thread cron no ``on_run_completed``; the payload names the assistant by id."""
    body = {
        "cron_id": str(cron.cron_id),
        "assistant_id": str(cron.assistant_id),
        "thread_id": str(cron.thread_id) if cron.thread_id else None,
        "user_id": cron.owner.get_username(),
        "end_time": iso(cron.end_time),
        "schedule": cron.schedule,
        "timezone": cron.timezone or None,
        "payload": {"assistant_id": str(cron.assistant_id), **cron.payload, "metadata": cron.metadata},
        "next_run_date": iso(cron.next_run_date),
        "metadata": cron.metadata,
        "on_run_completed": cron.on_run_completed or None,
        "enabled": cron.enabled,
        "created_at": iso(cron.created_at),
        "updated_at": iso(cron.updated_at),
    }
    return _selected(body, select)
