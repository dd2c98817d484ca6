"""``/mcp/``: the assistants as MCP tools, over MCP's Streamable HTTP transport, stateless.

A small JSON-RPC 2.0 handler rather than the ``mcp`` package's server: that one is a Starlette
application with its own session manager and task group, which does not sit inside a Django view;
what a stateless server answers is small enough to write out here. Every POST carries one
JSON-RPC message and gets a JSON answer (never an SSE stream); no ``Mcp-Session-Id`` is issued.

- ``initialize``: the client's protocol version if supported (else the latest), ``tools``
  capability; ``ping``; notifications and client responses are accepted with a 202.
- ``tools/list``: one tool per assistant the caller sees (the system assistants and their own),
  named after the assistant (``[A-Za-z0-9_-]``, 64 at most; a name taken by an older assistant
  gets the id's first 8 characters appended), its input schema the graph's input schema.
- ``tools/call``: a stateless run of the assistant with the arguments as input, waited for; the
  result is the run's final values as JSON text and ``structuredContent``, ``isError`` when the
  run failed.

``GET /mcp/`` is a 405 (no server-initiated stream), ``DELETE /mcp/`` a 404 (no sessions to end).
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import APIException

from project.api.errors import ErrorStyle, error_response
from project.db.async_db import in_executor
from project.realtime.sse import stream_client
from runs import services
from runs.graphs import graph_get
from runs.jsonable import to_json
from runs.models import Assistant, DiscardedRun
from runs.services.waiting import run_create_awaited, run_result_chunks
from runs.validation import validate_body

SUPPORTED_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
SERVER_INFO = {"name": "agent-jobs", "version": "1.0"}
# JSON-RPC 2.0's error codes.
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def _error(message_id: Any, code: int, message: str, status: int = 200) -> JsonResponse:
    body = {"jsonrpc": "2.0", "id": message_id, "error": {"code": code, "message": message}}
    return JsonResponse(body, status=status)


def _result(message_id: Any, result: dict[str, Any]) -> JsonResponse:
    return JsonResponse({"jsonrpc": "2.0", "id": message_id, "result": result})


# --- tools ---------------------------------------------------------------------------------------


def _input_schema(graph_id: str) -> dict[str, Any]:
    try:
        schema = to_json(graph_get(graph_id).get_input_jsonschema())
    except Exception:  # noqa: BLE001 a graph that cannot say (or load): any object is its input
        schema = None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return {"type": "object"}
    return schema


def assistant_tools(user: Any) -> list[tuple[str, Assistant]]:
    """(tool name, assistant) for every assistant ``user`` sees, oldest first: a name keeps
    naming the same assistant when newer ones with the same name appear."""
    tools: list[tuple[str, Assistant]] = []
    taken: set[str] = set()
    for assistant in services.assistants_search(user=user, sort_by="created_at", sort_order="asc"):
        name = TOOL_NAME.sub("_", assistant.name or assistant.graph_id)[:64] or "assistant"
        if name in taken:
            name = f"{name[:55]}-{str(assistant.pk)[:8]}"
        taken.add(name)
        tools.append((name, assistant))
    return tools


def tools_list(user: Any) -> dict[str, Any]:
    return {
        "tools": [
            {
                "name": name,
                "description": assistant.description
                or f"Runs the {assistant.graph_id!r} graph (assistant {assistant.pk}) on the input "
                "and answers its final state.",
                "inputSchema": _input_schema(assistant.graph_id),
            }
            for name, assistant in assistant_tools(user)
        ]
    }


def _start_tool_run(user: Any, name: str, arguments: dict[str, Any]) -> Any:
    assistant = next((a for tool, a in assistant_tools(user) if tool == name), None)
    if assistant is None:
        return None
    body = validate_body({"assistant_id": str(assistant.pk), "input": arguments}, "RunCreateStateless")
    return run_create_awaited(owner=user, body=body, idempotency=None)


async def tools_call(user: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """The tool's result, or None for an unknown tool."""
    arguments = params.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise ValueError("`arguments` must be an object.")
    try:
        awaited = await in_executor(_start_tool_run)(user, str(params.get("name")), arguments)
    except APIException as exc:
        # The input the run refused: the model calling the tool should read why.
        return {"content": [{"type": "text", "text": str(exc.detail)}], "isError": True}
    if awaited is None:
        return None
    run = awaited.run
    if isinstance(run, DiscardedRun):  # only a replay can find its run gone; this never replays
        values: Any = run.result
    else:
        chunks = [
            chunk async for chunk in run_result_chunks(
                thread_id=run.thread_id, run_id=run.pk, discard_thread=awaited.discard_thread
            )
        ]
        values = json.loads(b"".join(chunks))
    failed = isinstance(values, dict) and "__error__" in values
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": json.dumps(values, ensure_ascii=False, default=str)}],
        "isError": failed,
    }
    if isinstance(values, dict) and not failed:
        result["structuredContent"] = values
    return result


# --- the endpoint --------------------------------------------------------------------------------


def _accepts_both(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return "*/*" in types or {"application/json", "text/event-stream"} <= types


async def _answer(user: Any, message: dict[str, Any]) -> HttpResponseBase:
    message_id, method = message.get("id"), message.get("method")
    params = message.get("params") or {}
    if not isinstance(params, dict):
        return _error(message_id, INVALID_PARAMS, "`params` must be an object.")
    if method == "initialize":
        requested = params.get("protocolVersion")
        return _result(message_id, {
            "protocolVersion": requested if requested in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1],
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": SERVER_INFO,
        })
    if method == "ping":
        return _result(message_id, {})
    if method == "tools/list":
        return _result(message_id, await in_executor(tools_list)(user))
    if method == "tools/call":
        try:
            result = await tools_call(user, params)
        except ValueError as exc:
            return _error(message_id, INVALID_PARAMS, str(exc))
        if result is None:
            return _error(message_id, INVALID_PARAMS, f"Unknown tool: {params.get('name')!r}.")
        return _result(message_id, result)
    return _error(message_id, METHOD_NOT_FOUND, f"Method not found: {method!r}.")


@csrf_exempt
async def mcp_endpoint(request: HttpRequest) -> HttpResponseBase:
    """``POST /mcp/`` (one JSON-RPC message), ``GET`` 405, ``DELETE`` 404; see the module."""
    if request.method not in ("POST", "DELETE"):
        # GET included: this server never opens a stream of its own.
        response = HttpResponse(status=405)
        response["Allow"] = "POST, DELETE"
        return response
    try:
        user = (await stream_client(request, unsafe=True)).user
    except APIException as exc:
        return error_response(exc, style=ErrorStyle.LANGGRAPH)
    if request.method == "DELETE":
        # Stateless: there is never a session to terminate.
        return JsonResponse({"detail": "Session not found"}, status=404)
    if not _accepts_both(request):
        return _error(None, INVALID_REQUEST, "Accept must include application/json and text/event-stream.", 400)
    try:
        message = json.loads(request.body)
    except ValueError:
        return _error(None, PARSE_ERROR, "Parse error: the body is not JSON.", 400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _error(None, INVALID_REQUEST, "One JSON-RPC 2.0 message (an object) per request.", 400)
    if "method" not in message or "id" not in message:
        # A notification, or the client's answer to a request: nothing to say back.
        return HttpResponse(status=202)
    return await _answer(user, message)
