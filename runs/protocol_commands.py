"""``POST /threads/{thread_id}/commands``: the Agent Server's v2 (thread-centric) protocol commands.

A command is ``{"id", "method", "params"}``; the answer is ``{"type": "success", "id", "result",
"meta"}`` or ``{"type": "error", "id", "error", "message"}``, both with status 200, as the spec
says (a malformed envelope is a 400 with the error shape). The events a command's run produces are
read by ``POST /threads/{thread_id}/stream/events`` (``runs.protocol_events``).

- ``run.start`` creates a run on the thread, creating the thread first if it does not exist (the
  SDK mints thread ids itself and sends no ``if_not_exists``).
- ``input.respond`` resumes an interrupted thread: a run with ``Command(resume={interrupt_id:
  response})`` on the thread's assistant.
- ``agent.getTree`` and ``state.get`` answer from the thread row.

``meta.applied_through_seq`` of a command that starts a run is the thread's last event seq before
the run: a stream opened with it as ``since`` gets every event of the run (langgraph-sdk does so).
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import APIException

from runs import services
from runs.errors import NotFound, thread_not_found
from runs.models import Run, Thread, ThreadStatus
from runs.protocol_events import (
    PROTOCOL_STREAM_MODES,
    remember_run_for_replay,
    thread_last_seq,
)
from runs.validation import validate_body

ERROR_CODES = (
    "invalid_argument", "unknown_command", "unknown_error", "no_such_run", "no_such_subscription",
    "no_such_namespace", "no_such_interrupt", "no_such_checkpoint", "permission_denied",
    "not_supported",
)
# Methods the protocol defines that this server does not serve over HTTP.
NOT_SUPPORTED = {
    "subscription.subscribe": "Subscriptions are WebSocket commands; over HTTP, open "
    "POST /threads/{thread_id}/stream/events with the filter instead.",
    "subscription.unsubscribe": "Subscriptions are WebSocket commands; close the event stream instead.",
    "subscription.reconnect": "Reopen POST /threads/{thread_id}/stream/events with `since` instead.",
    "input.inject": "input.inject is not supported; start a run with the message as its input.",
    "state.listCheckpoints": "Use GET /threads/{thread_id}/history.",
    "state.fork": "Use POST /threads/{thread_id}/runs with a checkpoint_id.",
}
THREAD_TREE_STATUS: dict[str, str] = {
    ThreadStatus.BUSY: "running",
    ThreadStatus.INTERRUPTED: "interrupted",
    ThreadStatus.ERROR: "failed",
    ThreadStatus.IDLE: "completed",
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_body(command_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": command_id, "error": code, "message": message}


def _envelope_problem(envelope: Any) -> str | None:
    if not isinstance(envelope, dict):
        return "A command is a JSON object with `id`, `method` and `params`."
    command_id = envelope.get("id")
    if not isinstance(command_id, int) or isinstance(command_id, bool) or command_id < 0:
        return "`id` must be a non-negative integer."
    if not isinstance(envelope.get("method"), str) or not envelope["method"]:
        return "`method` must be a non-empty string."
    if not isinstance(envelope.get("params", {}), dict):
        return "`params` must be an object."
    return None


def protocol_command(*, user: Any, thread_id: str, envelope: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of one command on the thread; a 404 (raised) when the thread is
    another user's, or missing for any command but ``run.start``."""
    problem = _envelope_problem(envelope)
    if problem is not None:
        command_id = envelope.get("id") if isinstance(envelope, dict) else None
        valid_id = isinstance(command_id, int) and not isinstance(command_id, bool) and command_id >= 0
        return 400, error_body(command_id if valid_id else None, "invalid_argument", problem)
    thread_pk = services.parse_uuid(thread_id, "thread")
    command_id, method = envelope["id"], envelope["method"]
    owner_id = Thread.objects.filter(pk=thread_pk).values_list("owner_id", flat=True).first()
    if (owner_id is None and method != "run.start") or (owner_id is not None and owner_id != user.pk):
        # Another user's thread, or none (only run.start makes one): a 404, as everywhere in the API.
        raise thread_not_found(thread_pk)
    params = envelope.get("params") or {}
    handler = HANDLERS.get(method)
    try:
        if handler is None:
            if method in NOT_SUPPORTED:
                raise ProtocolError("not_supported", NOT_SUPPORTED[method])
            raise ProtocolError("unknown_command", f"Unknown command {method!r}.")
        result, meta = handler(user, thread_pk, params)
    except ProtocolError as exc:
        return 200, error_body(command_id, exc.code, exc.message)
    except APIException as exc:
        if exc.status_code in (400, 404, 409, 422):
            code = "no_such_run" if isinstance(exc, NotFound) and method == "input.respond" else "invalid_argument"
            return 200, error_body(command_id, code, str(exc.detail))
        raise  # 429 and the like are the HTTP request's answer, not the command's
    body: dict[str, Any] = {"type": "success", "id": command_id, "result": result}
    if meta:
        body["meta"] = meta
    return 200, body


def _checked(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_body(body, "RunCreateStateful")
    except APIException as exc:
        raise ProtocolError("invalid_argument", str(exc.detail)) from None


def _start(user: Any, thread_pk: Any, body: dict[str, Any]) -> tuple[dict, dict]:
    since = thread_last_seq(thread_pk)
    run = services.run_create(owner=user, body=body, thread_id=thread_pk)
    remember_run_for_replay(thread_id=thread_pk, run_id=run.pk, since=since)
    return {"run_id": str(run.pk)}, {"applied_through_seq": since}


def _run_options(params: dict[str, Any]) -> dict[str, Any]:
    return {
        key: params[key] for key in ("config", "metadata") if params.get(key) is not None
    } | {"stream_mode": list(PROTOCOL_STREAM_MODES), "stream_subgraphs": True}


def run_start(user: Any, thread_pk: Any, params: dict[str, Any]) -> tuple[dict, dict]:
    assistant_id = params.get("assistant_id")
    if not isinstance(assistant_id, str) or not assistant_id:
        raise ProtocolError("invalid_argument", "run.start needs `assistant_id`.")
    body = {"assistant_id": assistant_id, "if_not_exists": "create", **_run_options(params)}
    if params.get("input") is not None:
        body["input"] = params["input"]
    return _start(user, thread_pk, _checked(body))


def _responses(params: dict[str, Any]) -> dict[str, Any]:
    """{interrupt_id: response} from either form of ``input.respond``."""
    if "responses" in params:
        entries = params["responses"]
        if not isinstance(entries, list) or not entries:
            raise ProtocolError("invalid_argument", "`responses` must be a non-empty list.")
    else:
        entries = [params]
    answers: dict[str, Any] = {}
    for entry in entries:
        interrupt_id = entry.get("interrupt_id") if isinstance(entry, dict) else None
        if not isinstance(interrupt_id, str) or not interrupt_id or "response" not in entry:
            raise ProtocolError("invalid_argument", "Each response needs `interrupt_id` and `response`.")
        answers[interrupt_id] = entry["response"]
    return answers


def input_respond(user: Any, thread_pk: Any, params: dict[str, Any]) -> tuple[dict, dict]:
    answers = _responses(params)
    thread = services.thread_get(user=user, thread_id=thread_pk)
    pending = {
        interrupt.get("id")
        for interrupts in (thread.interrupts or {}).values()
        for interrupt in interrupts
        if isinstance(interrupt, dict)
    }
    unknown = [interrupt_id for interrupt_id in answers if interrupt_id not in pending]
    if unknown:
        raise ProtocolError("no_such_interrupt", f"No pending interrupt {unknown[0]!r} on this thread.")
    # The thread's last run's assistant: the one that was interrupted.
    assistant_id = (
        Run.objects.filter(thread_id=thread.pk).order_by("-created_at")
        .values_list("assistant_id", flat=True).first()
    )
    if assistant_id is None:
        raise ProtocolError("no_such_run", "The thread has no run to resume.")
    command: dict[str, Any] = {"resume": answers}
    for key in ("update", "goto"):
        if params.get(key) is not None:
            command[key] = params[key]
    body = {"assistant_id": str(assistant_id), "command": command, **_run_options(params)}
    return _start(user, thread_pk, _checked(body))


def agent_get_tree(user: Any, thread_pk: Any, params: dict[str, Any]) -> tuple[dict, dict]:
    thread = services.thread_get(user=user, thread_id=thread_pk)
    graph_name = (thread.metadata or {}).get("graph_id") or ""
    status = THREAD_TREE_STATUS.get(thread.status, "completed")
    return {"tree": {"namespace": [], "status": status, "graph_name": graph_name}}, {}


def state_get(user: Any, thread_pk: Any, params: dict[str, Any]) -> tuple[dict, dict]:
    if params.get("namespace"):
        raise ProtocolError("no_such_namespace", "Only the root namespace's state is served.")
    thread = services.thread_get(user=user, thread_id=thread_pk)
    values = thread.values if isinstance(thread.values, dict) else {}
    keys = params.get("keys")
    if isinstance(keys, list):
        values = {key: value for key, value in values.items() if key in keys}
    return {"values": values}, {}


HANDLERS = {
    "run.start": run_start,
    "input.respond": input_respond,
    "agent.getTree": agent_get_tree,
    "state.get": state_get,
}
