"""``POST /a2a/{assistant_id}``: an assistant reached over the Agent-to-Agent protocol (JSON-RPC 2.0),
and its agent card.

A2A's objects map onto ours: a *context* (``contextId``) is a thread, a *task* (``id``) is a run
on it. A message's ``text`` parts become ``{"messages": [{"role": "user", "content": ...}]}`` (so
the assistant's input must have ``messages``), its ``data`` parts are merged into the input.

- ``message/send`` runs the assistant on the context's thread (created when new; a new context
  when ``contextId`` is absent) and answers the finished Task: ``completed`` with the last message
  (or the final values) as its artifact, ``input-required`` when the graph stopped at an
  ``interrupt()`` (its value in the status message), ``failed``, ``canceled``. A message sent to
  an ``input-required`` context resumes it: its text (or ``data.resume``) is the resume value.
- ``message/stream``: the same as Server-Sent Events of JSON-RPC responses: the Task
  (``submitted``), a ``working`` status update, the artifact, a final status update.
- ``tasks/get``: the Task of a run (``historyLength``: the thread's last messages with it).
- ``tasks/cancel``: cancels a pending or running run (it ends ``canceled``); a finished one is
  ``TaskNotCancelable``.

The agent card: ``GET /a2a/{assistant_id}/.well-known/agent-card.json`` (where A2A clients look,
given the endpoint's URL) and ``GET /.well-known/agent-card.json?assistant_id=...``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import APIException

from project.api.errors import ErrorStyle, error_response
from project.db.async_db import in_executor
from project.realtime.sse import EventStreamResponse, encode_data, stream_client, stream_open
from runs import services
from runs.errors import NotFound
from runs.graphs import graph_get
from runs.jsonable import to_json
from runs.models import Assistant, Run, RunStatus, Thread, ThreadStatus
from runs.services.waiting import run_result_chunks
from runs.validation import validate_body

PROTOCOL_VERSION = "0.3.0"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
TASK_NOT_FOUND, TASK_NOT_CANCELABLE = -32001, -32002
STATES: dict[str, str] = {
    RunStatus.PENDING: "submitted",
    RunStatus.RUNNING: "working",
    RunStatus.SUCCESS: "completed",
    RunStatus.ERROR: "failed",
    RunStatus.TIMEOUT: "failed",
    RunStatus.INTERRUPTED: "canceled",
}
FINAL_STATES = frozenset({"completed", "failed", "canceled", "input-required"})


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _envelope(message_id: Any, *, result: Any = None, error: RpcError | None = None) -> dict[str, Any]:
    if error is not None:
        return {"jsonrpc": "2.0", "id": message_id, "error": {"code": error.code, "message": error.message}}
    return {"jsonrpc": "2.0", "id": message_id, "result": result}


# --- input and output ----------------------------------------------------------------------------


def _input_properties(assistant: Assistant) -> set[str]:
    try:
        schema = to_json(graph_get(assistant.graph_id).get_input_jsonschema())
    except Exception:  # noqa: BLE001 a graph that cannot say: no known fields
        return set()
    return set((schema or {}).get("properties") or {})


def _message_parts(params: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    message = params.get("message")
    if not isinstance(message, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: `message` is required.")
    parts = message.get("parts")
    if not isinstance(parts, list) or not parts:
        raise RpcError(INVALID_PARAMS, "Invalid params: `message.parts` must be a non-empty list.")
    texts, data = [], []
    for part in parts:
        kind = part.get("kind") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "data" and isinstance(part.get("data"), dict):
            data.append(part["data"])
        else:
            raise RpcError(INVALID_PARAMS, "Invalid params: only `text` and `data` parts are supported.")
    return message, texts, data


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "") if isinstance(block, dict) else str(block) for block in content
        )
    return json.dumps(content, default=str)


def _artifact(values: Any) -> dict[str, Any] | None:
    """The last message of the final values as text, else the values as data."""
    if not isinstance(values, dict) or not values:
        return None
    messages = values.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    part: dict[str, Any]
    if isinstance(last, dict) and (last.get("type") == "ai" or last.get("role") in ("assistant", "ai")):
        part = {"kind": "text", "text": _content_text(last.get("content", ""))}
    else:
        part = {"kind": "data", "data": values}
    return {"artifactId": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(part, default=str))),
            "name": "Assistant Response", "parts": [part]}


def _a2a_message(message: Any, context_id: str, task_id: str) -> dict[str, Any] | None:
    if not isinstance(message, dict):
        return None
    human = message.get("type") == "human" or message.get("role") == "user"
    return {
        "kind": "message",
        "role": "user" if human else "agent",
        "messageId": str(message.get("id") or uuid.uuid4()),
        "parts": [{"kind": "text", "text": _content_text(message.get("content", ""))}],
        "contextId": context_id,
        "taskId": task_id,
    }


# --- tasks ---------------------------------------------------------------------------------------


def task_json(run: Run, thread: Thread | None, values: Any, history_length: int | None = None) -> dict[str, Any]:
    """The A2A Task of a run, from its status and (once it ended) its final values."""
    context_id, task_id = str(run.thread_id), str(run.pk)
    state = STATES.get(run.status, "unknown")
    status: dict[str, Any] = {"state": state}
    interrupts = values.get("__interrupt__") if isinstance(values, dict) else None
    task: dict[str, Any] = {"kind": "task", "id": task_id, "contextId": context_id}
    if state == "completed" and interrupts:
        status["state"] = "input-required"
        value = interrupts[0].get("value") if isinstance(interrupts[0], dict) else interrupts[0]
        part = (
            {"kind": "text", "text": value} if isinstance(value, str)
            else {"kind": "data", "data": {"interrupt": value}}
        )
        status["message"] = {
            "kind": "message", "role": "agent", "messageId": str(uuid.uuid4()), "parts": [part],
            "contextId": context_id, "taskId": task_id,
        }
    elif state == "completed":
        artifact = _artifact(values)
        if artifact is not None:
            task["artifacts"] = [artifact]
    elif state == "failed":
        error = run.error if isinstance(run.error, dict) else {}
        status["message"] = {
            "kind": "message", "role": "agent", "messageId": str(uuid.uuid4()),
            "parts": [{"kind": "text", "text": error.get("message") or f"The run ended {run.status}."}],
            "contextId": context_id, "taskId": task_id,
        }
    task["status"] = status
    if history_length and thread is not None and isinstance(thread.values, dict):
        messages = thread.values.get("messages") or []
        task["history"] = [
            m for m in (_a2a_message(m, context_id, task_id) for m in messages[-history_length:]) if m
        ]
    return task


def _assistant(user: Any, assistant_id: str) -> Assistant:
    return services.assistant_get(user=user, assistant_id=assistant_id)


def _start(user: Any, assistant: Assistant, params: dict[str, Any]) -> Run:
    """The run a ``message/send`` or ``message/stream`` starts."""
    message, texts, data = _message_parts(params)
    context_id = message.get("contextId") or str(uuid.uuid4())
    try:
        thread_pk = uuid.UUID(str(context_id))
    except ValueError:
        raise RpcError(INVALID_PARAMS, "Invalid params: `contextId` must be a UUID (a thread id).") from None
    thread = Thread.objects.filter(pk=thread_pk, owner=user).first()
    body: dict[str, Any] = {"assistant_id": str(assistant.pk), "if_not_exists": "create"}
    if thread is not None and thread.status == ThreadStatus.INTERRUPTED:
        resume: Any = texts[0] if texts else None
        for item in data:
            if "resume" in item:
                entries = item["resume"]
                resume = (
                    {e["id"]: e.get("value") for e in entries if isinstance(e, dict) and "id" in e}
                    if isinstance(entries, list) else entries
                )
        body["command"] = {"resume": resume}
    else:
        graph_input: dict[str, Any] = {}
        if texts:
            if "messages" not in _input_properties(assistant):
                raise RpcError(
                    INVALID_PARAMS, "Invalid params: text parts need an assistant whose input has `messages`."
                )
            graph_input["messages"] = [{"role": "user", "content": text} for text in texts]
        for item in data:
            graph_input.update(item)
        body["input"] = graph_input
    try:
        validate_body(body, "RunCreateStateful")
        return services.run_create(owner=user, body=body, thread_id=thread_pk)
    except APIException as exc:
        raise RpcError(INVALID_PARAMS, f"Invalid params: {exc.detail}") from None


def _run_and_thread(run_id: Any) -> tuple[Run, Thread | None]:
    run = Run.objects.get(pk=run_id)
    return run, Thread.objects.filter(pk=run.thread_id).first()


async def _finished_task(run: Run) -> dict[str, Any]:
    chunks = [chunk async for chunk in run_result_chunks(thread_id=run.thread_id, run_id=run.pk)]
    values = json.loads(b"".join(chunks))
    ended, thread = await in_executor(_run_and_thread)(run.pk)
    return task_json(ended, thread, values)


def _task_get(user: Any, params: dict[str, Any], *, cancel: bool = False) -> dict[str, Any]:
    try:
        run_pk, thread_pk = uuid.UUID(str(params.get("id"))), uuid.UUID(str(params.get("contextId")))
    except ValueError:
        raise RpcError(INVALID_PARAMS, "Invalid params: `id` and `contextId` must be UUIDs.") from None
    run = Run.objects.filter(pk=run_pk, thread_id=thread_pk, owner=user).first()
    if run is None:
        raise RpcError(TASK_NOT_FOUND, "Task not found.")
    if cancel:
        if run.status in RunStatus.terminal():
            raise RpcError(TASK_NOT_CANCELABLE, f"Task cannot be canceled: it is {STATES.get(run.status)}.")
        try:
            services.run_cancel(user=user, thread_id=thread_pk, run_id=run_pk)
        except NotFound:
            raise RpcError(TASK_NOT_CANCELABLE, "Task cannot be canceled: it just ended.") from None
        run.refresh_from_db()
        if run.status == RunStatus.RUNNING:
            # A running run stops within a moment: the task says it is being canceled.
            return {**task_json(run, None, None), "status": {"state": "working"}}
    history = params.get("historyLength")
    if history is not None and (not isinstance(history, int) or isinstance(history, bool) or history < 0):
        raise RpcError(INVALID_PARAMS, "Invalid params: `historyLength` must be a non-negative integer.")
    thread = Thread.objects.filter(pk=thread_pk).first()
    return task_json(run, thread, run.result, history)


# --- the endpoint --------------------------------------------------------------------------------


def _event(message_id: Any, result: dict[str, Any]) -> bytes:
    return b"data: " + encode_data(_envelope(message_id, result=result)) + b"\r\n\r\n"


async def _stream(message_id: Any, run: Run) -> AsyncIterator[bytes]:
    context_id, task_id = str(run.thread_id), str(run.pk)
    yield _event(message_id, {**task_json(run, None, None), "status": {"state": "submitted"}})
    yield _event(message_id, {
        "kind": "status-update", "taskId": task_id, "contextId": context_id,
        "status": {"state": "working"}, "final": False,
    })
    task = await _finished_task(run)
    for artifact in task.get("artifacts", []):
        yield _event(message_id, {
            "kind": "artifact-update", "taskId": task_id, "contextId": context_id,
            "artifact": artifact, "lastChunk": True,
        })
    yield _event(message_id, {
        "kind": "status-update", "taskId": task_id, "contextId": context_id,
        "status": task["status"], "final": True,
    })


async def _answer(request: HttpRequest, user: Any, assistant: Assistant, message: dict[str, Any]) -> HttpResponseBase:
    message_id, method = message.get("id"), message.get("method")
    params = message.get("params")
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: `params` must be an object.")
    if method == "message/send":
        run = await in_executor(_start)(user, assistant, params)
        return JsonResponse(_envelope(message_id, result=await _finished_task(run)))
    if method == "message/stream":
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return JsonResponse(
                _envelope(
                    message_id, error=RpcError(INVALID_REQUEST, "message/stream needs Accept: text/event-stream.")
                ),
                status=400,
            )
        run = await in_executor(_start)(user, assistant, params)

        async def start() -> HttpResponseBase:
            return EventStreamResponse(_stream(message_id, run))

        return await stream_open(user, start)
    if method == "tasks/get":
        return JsonResponse(_envelope(message_id, result=await in_executor(_task_get)(user, params)))
    if method == "tasks/cancel":
        task = await in_executor(_task_get)(user, params, cancel=True)
        return JsonResponse(_envelope(message_id, result=task))
    raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method!r}.")


@csrf_exempt
async def a2a_endpoint(request: HttpRequest, assistant_id: str) -> HttpResponseBase:
    """``POST /a2a/{assistant_id}``: one JSON-RPC request (see the module)."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    try:
        user = (await stream_client(request, unsafe=True)).user
        assistant = await in_executor(_assistant)(user, assistant_id)
    except APIException as exc:
        return error_response(exc, style=ErrorStyle.LANGGRAPH)
    try:
        message = json.loads(request.body)
    except ValueError:
        parse_error = RpcError(PARSE_ERROR, "Parse error: the body is not JSON.")
        return JsonResponse(_envelope(None, error=parse_error), status=400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or "method" not in message:
        return JsonResponse(
            _envelope(None, error=RpcError(INVALID_REQUEST, "Invalid request: one JSON-RPC 2.0 request object.")),
            status=400,
        )
    try:
        return await _answer(request, user, assistant, message)
    except RpcError as exc:
        return JsonResponse(_envelope(message.get("id"), error=exc))


def agent_card(request: HttpRequest, assistant: Assistant) -> dict[str, Any]:
    url = request.build_absolute_uri(f"/a2a/{assistant.pk}")
    return {
        "protocolVersion": PROTOCOL_VERSION,
        "name": assistant.name,
        "description": assistant.description or f"The {assistant.graph_id!r} graph.",
        "url": url,
        "preferredTransport": "JSONRPC",
        "version": str(assistant.version),
        "capabilities": {"streaming": True, "pushNotifications": False, "stateTransitionHistory": False},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [{
            "id": f"{assistant.graph_id}-main",
            "name": assistant.name,
            "description": assistant.description or f"Runs the {assistant.graph_id!r} graph.",
            "tags": [assistant.graph_id],
        }],
    }


@csrf_exempt
async def agent_card_view(request: HttpRequest, assistant_id: str | None = None) -> HttpResponseBase:
    """The assistant's A2A agent card (see the module for its two addresses)."""
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    try:
        user = (await stream_client(request)).user
        wanted = assistant_id or request.GET.get("assistant_id")
        if not wanted:
            raise NotFound("Give the assistant: ?assistant_id=<id>.")
        assistant = await in_executor(_assistant)(user, wanted)
    except APIException as exc:
        return error_response(exc, style=ErrorStyle.LANGGRAPH)
    return JsonResponse(agent_card(request, assistant))
