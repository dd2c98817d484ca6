"""The LangGraph-compatible API in our OpenAPI schema.

The runs viewsets validate bodies against the LangGraph Agent Server's own JSON schemas rather
than with serializers, so drf-spectacular cannot introspect them. Instead of re-describing them, we
document each route we serve with the real server's operation (``schema/langgraph_paths.json``,
vendored from its OpenAPI document) and correct what we answer differently: the statuses in
``STATUSES`` (every one of them reachable, see tests/test_schema.py) and the few component shapes
the real server itself does not follow (``NULLABLE``, versions, event streams).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from drf_spectacular.drainage import warn
from rest_framework.permissions import AllowAny

from project.openapi import SECURITY, Route, api_routes

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"

# What each operation answers besides 401 (authentication) and 413 (body limit), which
# project.openapi adds to every operation. The real server's spec lists 404/409/422 more freely
# than its code answers them, and has 200 where it sends 202/204.
STATUSES: dict[str, tuple[int, ...]] = {
    "get /ok": (200,),
    "get /info": (200,),
    "post /assistants": (200, 404, 409, 422, 429),
    "post /assistants/search": (200, 422),
    "post /assistants/count": (200, 422),
    "get /assistants/{assistant_id}": (200, 404, 422),
    "patch /assistants/{assistant_id}": (200, 404, 409, 422),
    "delete /assistants/{assistant_id}": (204, 404, 409, 422),
    "get /assistants/{assistant_id}/graph": (200, 404, 422),
    "get /assistants/{assistant_id}/subgraphs": (200, 404, 422),
    "get /assistants/{assistant_id}/subgraphs/{namespace}": (200, 404, 422),
    "get /assistants/{assistant_id}/schemas": (200, 404, 422),
    "post /assistants/{assistant_id}/versions": (200, 404, 422),
    "post /assistants/{assistant_id}/latest": (200, 404, 409, 422),
    "post /threads": (200, 409, 422, 429),
    "post /threads/search": (200, 422),
    "post /threads/count": (200, 422),
    "post /threads/prune": (200, 422),
    "get /threads/{thread_id}": (200, 404, 422),
    "patch /threads/{thread_id}": (200, 404, 422),
    "delete /threads/{thread_id}": (204, 404, 422),
    "post /threads/{thread_id}/copy": (200, 404, 422),
    # 501 is for a custom checkpointer, which this server never has.
    "get /threads/{thread_id}/storage": (200, 404, 422),
    "get /threads/{thread_id}/state": (200, 404, 422),
    "post /threads/{thread_id}/state": (200, 400, 404, 409, 422),
    "get /threads/{thread_id}/state/{checkpoint_id}": (200, 404, 422),
    "post /threads/{thread_id}/state/checkpoint": (200, 404, 422),
    "get /threads/{thread_id}/history": (200, 404, 422),
    "post /threads/{thread_id}/history": (200, 404, 422),
    "get /threads/{thread_id}/stream": (200, 404, 422, 429),
    "get /threads/{thread_id}/runs": (200, 404, 422),
    "post /threads/{thread_id}/runs": (200, 400, 404, 409, 422, 429),
    "post /threads/{thread_id}/runs/wait": (200, 400, 404, 409, 422, 429),
    "post /threads/{thread_id}/runs/stream": (200, 400, 404, 409, 422, 429),
    "get /threads/{thread_id}/runs/{run_id}": (200, 404, 422),
    "delete /threads/{thread_id}/runs/{run_id}": (204, 404, 422),
    # A missing run (or another user's) is a 200 whose body, or only event, says so, as on the
    # real server.
    "get /threads/{thread_id}/runs/{run_id}/join": (200, 422),
    "get /threads/{thread_id}/runs/{run_id}/stream": (200, 422, 429),
    # 202 without a body; 200 with the run's result when ?wait=true.
    "post /threads/{thread_id}/runs/{run_id}/cancel": (200, 202, 404, 422),
    "post /runs": (200, 400, 404, 409, 422, 429),
    "post /runs/wait": (200, 400, 404, 409, 422, 429),
    "post /runs/stream": (200, 400, 404, 409, 422, 429),
    "post /runs/batch": (200, 400, 404, 409, 422, 429),
    "post /runs/cancel": (204, 404, 422),
    # crons: a delete answers 204 as the other deletes do.
    "post /threads/{thread_id}/runs/crons": (200, 400, 404, 422, 429),
    "post /runs/crons": (200, 400, 404, 422, 429),
    "post /runs/crons/search": (200, 422),
    "post /runs/crons/count": (200, 422),
    "get /runs/crons/{cron_id}": (200, 404, 422),
    "patch /runs/crons/{cron_id}": (200, 400, 404, 422),
    "delete /runs/crons/{cron_id}": (204, 404, 422),
    # The store: a missing item is a 200 with null, never a 404; nothing answers the spec's 400.
    "put /store/items": (204, 422),
    "get /store/items": (200, 422),
    "delete /store/items": (204, 422),
    "post /store/items/search": (200, 422),
    "post /store/namespaces": (200, 422),
    # The v2 protocol: a command's own failures are 200s with a ProtocolError body.
    # 404: another user's thread, or a missing one for any command but run.start.
    "post /threads/{thread_id}/commands": (200, 400, 404, 422, 429),
    "post /threads/{thread_id}/stream/events": (200, 400, 404, 422, 429),
    # MCP: JSON-RPC errors are 200s; a notification is a 202; no sessions, so DELETE is a 404.
    "post /mcp": (200, 202, 400),
    "delete /mcp": (404,),
    # A2A: a JSON-RPC error is a 200 too; 400 for a body that is no JSON-RPC request.
    "post /a2a/{assistant_id}": (200, 400, 404, 422),
}
# The methods of plain (non-DRF) views whose path the spec lists with more methods than they
# serve: GET /mcp/ is the spec's own 405.
PLAIN_VIEW_METHODS: dict[str, tuple[str, ...]] = {"/mcp": ("post", "delete")}

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
# Responses for statuses the spec's operation lacks.
RESPONSES: dict[int, dict[str, Any]] = {
    202: {"description": "Accepted; the run stops within a moment."},
    204: {"description": "Success, no content."},
    400: {"description": "Bad Request", "content": _ERROR},
    404: {"description": "Not Found", "content": _ERROR},
    409: {"description": "Conflict", "content": _ERROR},
    422: {"description": "Validation Error", "content": _ERROR},
    429: {
        "description": (
            "Too Many Requests: over the per-user create rate (`Retry-After` says when to retry), "
            "the cap on active runs (`RUNS_MAX_ACTIVE_PER_USER`) or the cap on open streams "
            "(`STREAMS_MAX_PER_USER`)."
        ),
        "headers": {
            "Retry-After": {
                "description": "Seconds until the create rate allows another create.",
                "schema": {"type": "string"},
            }
        },
        "content": _ERROR,
    },
}

# Creates that take an Idempotency-Key (runs.services.Idempotency).
IDEMPOTENT: frozenset[str] = frozenset({
    "post /assistants",
    "post /threads",
    "post /threads/{thread_id}/runs",
    "post /threads/{thread_id}/runs/wait",
    "post /threads/{thread_id}/runs/stream",
    "post /runs",
    "post /runs/wait",
    "post /runs/stream",
    "post /runs/batch",
})
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Retrying with the same key (and the same request) answers with what the first request "
        "created instead of creating again: the object; for `/wait`, the run's result once it "
        "ends; for `/stream`, the run's stream from its first event (or after `Last-Event-ID`). "
        "The same key with another request is a 409. Keys are per user."
    ),
    "schema": {"type": "string", "maxLength": 255},
}
IDEMPOTENT_REPLAYED = {
    "description": "With an Idempotency-Key: `true` when the response is the first request's.",
    "schema": {"type": "string", "enum": ["true", "false"]},
}

# Where the real server (and so we, byte for byte) answers outside its own spec's shapes; each
# one is in ../shared/langgraph-behaviour.md's observed bodies. Only response shapes are loosened:
# request validation (runs.validation) reads langgraph_api.json untouched.
NULLABLE: tuple[str, ...] = (
    # OpenAPI 3.0's "nullable" in a 3.1 document.
    "Run.properties.langsmith_session_name",
    # A thread no run has touched has "values": null.
    "Thread.properties.values",
    # The state of a thread without checkpoints, and the first checkpoint's missing parent.
    "ThreadState.properties.metadata",
    "ThreadState.properties.created_at",
    "ThreadState.properties.checkpoint",
    "ThreadState.properties.parent_checkpoint",
    "ThreadState.properties.tasks.items.properties.error",
    "ThreadState.properties.tasks.items.properties.checkpoint",
    "ThreadState.properties.tasks.items.properties.state",
    "Interrupt.properties.response_schema",
    # A graph without one of these schemas answers null for it.
    "GraphSchema.properties.input_schema",
    "GraphSchema.properties.output_schema",
    "GraphSchema.properties.state_schema",
    "GraphSchema.properties.config_schema",
    "GraphSchema.properties.context_schema",
    # A stateless cron has no thread; a cron without an end time, none.
    "Cron.properties.thread_id",
    "Cron.properties.end_time",
)

# Each Server-Sent Event as schemathesis and SSE tooling read an OpenAPI 3.1 text/event-stream
# schema: one object per event, its data JSON.
RUN_EVENT = {
    "type": "object",
    "description": (
        "One Server-Sent Event. The first is `metadata` (`{run_id, attempt}`); then one per chunk "
        "of each requested stream mode (`values`, `updates`, `messages/partial`, `custom`, "
        "`debug`, `tasks`, `checkpoints`, `events`; `mode|namespace` with `stream_subgraphs`); "
        "`error` when the run fails. A `: heartbeat` comment comes every 5 s of silence."
    ),
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
    },
}

# The v2 protocol's events, framed as RUN_EVENT is: the event's method, its seq as the id.
PROTOCOL_EVENT = {
    "type": "object",
    "description": (
        "One Server-Sent Event per protocol event: `event` is its method (`lifecycle`, `values`, "
        "`updates`, `custom`, `tasks`, `input.requested`), `id` its `seq`, and `data` the "
        "`ProtocolEvent` as JSON. A `: heartbeat` comment comes every 5 s of silence."
    ),
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
    },
}

# A2A's message/stream: each event's data a JSON-RPC response (Task, status or artifact update).
A2A_EVENT = {
    "type": "object",
    "description": (
        "One Server-Sent Event per JSON-RPC response: the Task (`submitted`), a `status-update` "
        "(`working`), an `artifact-update`, then a `status-update` with `final: true`."
    ),
    "required": ["data"],
    "properties": {"data": {"type": "string", "contentMediaType": "application/json"}},
}
EVENT_SCHEMAS = {
    "post /threads/{thread_id}/stream/events": PROTOCOL_EVENT,
    "post /a2a/{assistant_id}": A2A_EVENT,
}

# Query parameters of the real server's operations that our views do not read: not documented,
# rather than documented and ignored.
UNSUPPORTED_PARAMETERS: dict[str, set[str]] = {
    "get /ok": {"check_db"},
    "delete /assistants/{assistant_id}": {"delete_threads"},
    "get /threads/{thread_id}": {"include"},
}
# Lists whose items hold only the fields named by ``select`` when it is given.
SELECTABLE: dict[str, str] = {
    "post /assistants/search": "Assistant",
    "post /threads/search": "Thread",
    "get /threads/{thread_id}/runs": "Run",
    "post /runs/crons/search": "Cron",
}
# Our error bodies already are the real server's {"detail": ...}, plus "errors" on validation.
SHARED_COMPONENTS = {"ErrorResponse"}


@cache
def _vendored() -> tuple[dict[str, Any], dict[str, Any]]:
    """The real server's operations by path, and every component schema they reference."""
    paths_doc = json.loads((SCHEMA_DIR / "langgraph_paths.json").read_text())
    components = json.loads((SCHEMA_DIR / "langgraph_api.json").read_text())["components"]["schemas"]
    return paths_doc["paths"], {**components, **paths_doc["components"]["schemas"]}


def runs_routes() -> list[Route]:
    return [route for route in api_routes() if route.name.startswith("runs:")]


def exclude_runs_views(endpoints: list[tuple], **kwargs: Any) -> list[tuple]:
    """Preprocessing hook: drf-spectacular skips the runs views; ``add_langgraph_operations``
    documents them from the real server's spec."""
    callbacks = {route.callback for route in runs_routes()}
    return [endpoint for endpoint in endpoints if endpoint[3] not in callbacks]


def _is_public(route: Route) -> bool:
    cls = getattr(route.callback, "cls", None)
    if cls is None:
        return False
    return not cls.authentication_classes and all(p is AllowAny for p in cls.permission_classes)


def _allow_null(schema: dict[str, Any]) -> dict[str, Any]:
    schema = {key: value for key, value in schema.items() if key != "nullable"}
    if "$ref" in schema:
        ref = schema.pop("$ref")
        return {**schema, "anyOf": [{"$ref": ref}, {"type": "null"}]}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    return {**schema, "type": [*kinds, "null"] if "null" not in kinds else kinds}


def _fix_components(schemas: dict[str, Any]) -> dict[str, Any]:
    schemas = copy.deepcopy(schemas)
    for dotted in NULLABLE:
        *parents, leaf = dotted.split(".")
        node = schemas
        for part in parents:
            node = node[part]
        node[leaf] = _allow_null(node[leaf])
    # Saved versions have no updated_at (each version is immutable).
    version = copy.deepcopy(schemas["Assistant"])
    version["title"] = "AssistantVersion"
    version["required"] = [name for name in version["required"] if name != "updated_at"]
    version["properties"].pop("updated_at")
    schemas["AssistantVersion"] = version
    # The real server answers the namespaces in an object, not the bare array its spec shows.
    schemas["ListNamespaceResponse"] = {
        "type": "object",
        "required": ["namespaces"],
        "properties": {"namespaces": copy.deepcopy(schemas["ListNamespaceResponse"])},
    }
    # Search items carry the relevance score, null without a query.
    search_item = copy.deepcopy(schemas["Item"])
    search_item["title"] = "SearchItem"
    search_item["properties"]["score"] = {"type": ["number", "null"]}
    schemas["SearchItem"] = search_item
    schemas["SearchItemsResponse"]["properties"]["items"]["items"] = {"$ref": "#/components/schemas/SearchItem"}
    for name in SELECTABLE.values():
        selected = copy.deepcopy(schemas[name])
        selected.pop("required", None)
        selected["title"] = f"{name}Selected"
        selected["description"] = f"A {name} with only the fields named by `select`."
        schemas[f"{name}Selected"] = selected
    return schemas


def _operation(route: Route, method: str, spec_op: dict[str, Any]) -> dict[str, Any]:
    key = f"{method} {route.path}"
    operation = copy.deepcopy(spec_op)
    statuses = STATUSES.get(key)
    if statuses is None:
        warn(f"runs.openapi: statuses of {key.upper()} not reviewed; documenting the spec's as they are")
        statuses = tuple(int(code) for code in operation.get("responses", {}))
    spec_responses = operation.get("responses", {})
    operation["responses"] = {
        str(code): spec_responses.get(str(code)) or copy.deepcopy(RESPONSES[code]) for code in statuses
    }
    for response in operation["responses"].values():
        for media_type, content in (response.get("content") or {}).items():
            if media_type == "text/event-stream":
                content["schema"] = copy.deepcopy(EVENT_SCHEMAS.get(key, RUN_EVENT))
    if key in IDEMPOTENT:
        operation["parameters"] = [*operation.get("parameters", []), copy.deepcopy(IDEMPOTENCY_KEY)]
        headers = operation["responses"]["200"].setdefault("headers", {})
        headers["Idempotent-Replayed"] = copy.deepcopy(IDEMPOTENT_REPLAYED)
    if key in UNSUPPORTED_PARAMETERS:
        operation["parameters"] = [
            p for p in operation.get("parameters", []) if p["name"] not in UNSUPPORTED_PARAMETERS[key]
        ]
    if key in SELECTABLE:
        name = SELECTABLE[key]
        operation["responses"]["200"]["content"]["application/json"]["schema"]["items"] = {
            "anyOf": [{"$ref": f"#/components/schemas/{name}"}, {"$ref": f"#/components/schemas/{name}Selected"}]
        }
    if key == "post /assistants/{assistant_id}/versions":
        operation["responses"]["200"]["content"]["application/json"]["schema"] = {
            "type": "array", "items": {"$ref": "#/components/schemas/AssistantVersion"},
        }
    if key == "get /store/items":
        # A missing item is null, as on the real server.
        content = operation["responses"]["200"]["content"]["application/json"]
        content["schema"] = _allow_null(content["schema"])
    operation["security"] = [] if _is_public(route) else copy.deepcopy(SECURITY)
    return operation


def add_langgraph_operations(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """Postprocessing hook: the real server's operation for every runs route and method we serve."""
    spec_paths, spec_components = _vendored()
    # In the real server's order, whatever the order of our URL patterns (the router's is its own).
    order = {path: index for index, path in enumerate(spec_paths)}
    for route in sorted(runs_routes(), key=lambda route: order.get(route.path, len(order))):
        # The spec writes /mcp/ with its slash; our paths have none.
        spec_item = spec_paths.get(route.path) or spec_paths.get(route.path + "/")
        if spec_item is None:
            warn(f"runs.openapi: {route.path} is served but not in the vendored LangGraph spec")
            continue
        methods = route.view_methods() or PLAIN_VIEW_METHODS.get(route.path) or tuple(spec_item)
        for method in methods:
            if method not in spec_item:
                continue  # served here but not by the real server: tests/test_schema.py reports it
            result["paths"].setdefault(route.path, {})[method] = _operation(route, method, spec_item[method])
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in _fix_components(spec_components).items():
        if name in schemas and name not in SHARED_COMPONENTS:
            warn(f"runs.openapi: component {name} is defined by our API and by the LangGraph spec")
            continue
        schemas.setdefault(name, schema)
    return result
