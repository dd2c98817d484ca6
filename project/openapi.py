"""drf-spectacular hooks, and the routes of the project as OpenAPI path templates.

drf-spectacular documents DRF views from their serializers and ``extend_schema``. The rest is
added here: plain Django views it cannot see (the SSE streams), and the statuses every API
operation can answer whatever its view says (401 from authentication, 413 from the body limit).
``runs.openapi`` adds the LangGraph-compatible API the same way.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.schemas.generators import EndpointEnumerator

SECURITY: list[dict[str, list[str]]] = [{"ApiKeyAuth": []}, {"BearerAuth": []}]
BODY_METHODS = ("post", "put", "patch")
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Routes that are not the API: the admin (HTML, session login), the schema and its viewers, the
# orchestrator's probes (/healthz, /readyz), A2A's discovery documents (agent cards) and the
# landing page (/).
NOT_API = re.compile(r"^/(admin|api/schema|api/docs|api/redoc|docs|healthz|readyz)(/|$)|^.*/\.well-known/|^/$")


@dataclass(frozen=True)
class Route:
    """One URL pattern as an OpenAPI path template (``/threads/{thread_id}``)."""

    path: str
    name: str
    callback: Callable[..., Any]

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))

    def view_methods(self) -> tuple[str, ...] | None:
        """The HTTP methods a DRF view handles; None for a plain Django view (it may serve any)."""
        actions = getattr(self.callback, "actions", None)
        if actions:
            return tuple(method for method in HTTP_METHODS if method in actions)
        cls = getattr(self.callback, "cls", None)
        if cls is None:
            return None
        return tuple(method for method in HTTP_METHODS if hasattr(cls, method))


def _walk(patterns: list, prefix: str, namespace: str) -> Iterator[tuple[str, str, Callable]]:
    for pattern in patterns:
        regex = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _walk(pattern.url_patterns, regex, inner)
        elif isinstance(pattern, URLPattern):
            yield regex, f"{namespace}{pattern.name or ''}", pattern.callback


def _template(regex: str) -> str:
    path = EndpointEnumerator().get_path_from_regex(regex)
    return path.rstrip("/") if path != "/" else path


def api_routes() -> list[Route]:
    """Every route of the API (not the admin, not the schema views), as the schema names them."""
    routes = [
        Route(_template(regex), name, callback)
        for regex, name, callback in _walk(get_resolver().url_patterns, "", "")
    ]
    return [route for route in routes if not NOT_API.match(route.path)]


def path_shape(path: str) -> str:
    """A path template with its parameter names blanked, to match routes whatever they call ids."""
    return re.sub(r"\{\w+\}", "{}", path)


# --- hooks ----------------------------------------------------------------------------------------


def strip_optional_trailing_slash(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """Routes match with or without a trailing slash (`/?`); document the slash-less form."""
    result["paths"] = {
        (path.rstrip("/") if path != "/" else path): item for path, item in result["paths"].items()
    }
    return result


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


# One Server-Sent Event, as schemathesis and SSE tooling read an OpenAPI 3.1 text/event-stream
# schema (OpenAPI 3.2 calls it itemSchema).
EXECUTION_EVENT = {
    "type": "object",
    "description": "One event; a `: heartbeat` comment comes every 5 s of silence.",
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"type": "string", "enum": ["created", "status", "progress", "log", "worker_stopped"]},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's sequence number."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["seq", "at"],
                "properties": {"seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"}},
            },
        },
    },
}

# Plain Django views, documented by URL name: drf-spectacular only sees DRF views.
PLAIN_VIEW_OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "executions:execution-events": {
        "get": {
            "operationId": "api_v1_executions_events",
            "summary": "Stream an execution's events",
            "description": (
                "Replays the stored events after `Last-Event-ID` (header, or `last_event_id` in the "
                "query for an EventSource's first request), then follows new ones until the "
                "terminal status event. Event types: `created`, `status`, `progress`, `log`, "
                "`worker_stopped`; each event's data carries `seq` and `at`."
            ),
            "tags": ["api"],
            "parameters": [
                {"in": "path", "name": "id", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {
                    "in": "header", "name": "Last-Event-ID", "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]*$"},
                    "description": "Sequence number of the last event received; empty is none.",
                },
                {
                    "in": "query", "name": "last_event_id", "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]*$"},
                    "description": "The same, for clients that cannot set headers (the header wins).",
                },
            ],
            "responses": {
                "200": {
                    "description": "The event stream.",
                    "content": {"text/event-stream": {"schema": EXECUTION_EVENT}},
                },
                "400": _error("Last-Event-ID is not a sequence number."),
                "404": _error("No such execution for this user."),
            },
        }
    },
    # The Agent Server's operation, served by operations.metrics.
    "metrics": {
        "get": {
            "operationId": "system_metrics_metrics_get",
            "summary": "System Metrics",
            "description": (
                "Prometheus text (the default) or a JSON summary of queues, workers, jobs and HTTP "
                "requests. Open to loopback and staff; from elsewhere it needs "
                "`Authorization: Bearer $METRICS_TOKEN`."
            ),
            "tags": ["System"],
            "security": [],
            "parameters": [
                {
                    "in": "query", "name": "format", "required": False,
                    "schema": {"type": "string", "enum": ["prometheus", "json"], "default": "prometheus"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "object"}},
                    },
                },
                "422": _error("format is neither prometheus nor json."),
            },
        }
    },
}


def document_plain_views(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """Add the operations of plain Django views (SSE streams) that are routed."""
    for route in api_routes():
        for method, operation in PLAIN_VIEW_OPERATIONS.get(route.name, {}).items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            path = rename_parameters(route.path, names)
            # An operation open to anyone says so with its own empty security.
            result["paths"].setdefault(path, {})[method] = {"security": SECURITY, **copy.deepcopy(operation)}
    return result


def rename_parameters(path: str, names: list[str]) -> str:
    """``path`` with its parameters renamed, in order (the URLconf's ``pk`` is the schema's ``id``)."""
    names_iter = iter(names)
    return re.sub(r"\{\w+\}", lambda match: "{" + next(names_iter) + "}", path)


def nullable_as_any_of(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular writes a nullable field in OpenAPI 3.1 as ``oneOf: [X, null]``, which
    rejects null whenever X accepts it too (any JSON value): "X or null" is ``anyOf``."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: fix(value) for key, value in node.items()}
            alternatives = node.get("oneOf")
            if isinstance(alternatives, list) and {"type": "null"} in alternatives:
                node["anyOf"] = node.pop("oneOf")
            return node
        if isinstance(node, list):
            return [fix(value) for value in node]
        return node

    return fix(result)


def document_auth_and_limits(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """Statuses that come from outside the views: 401 from authentication on every protected
    operation, 413 from the request body limit on every method that carries a body. Security is
    written as alternatives: either API key header, not both."""
    schemes = result.setdefault("components", {}).setdefault("securitySchemes", {})
    # Session cookies are how the admin reaches the API; API clients use keys.
    schemes.pop("cookieAuth", None)
    for path, item in result["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                operation["security"] = copy.deepcopy(SECURITY)
                responses.setdefault("401", _error("Missing, invalid or revoked API key."))
            if method in BODY_METHODS:
                responses.setdefault("413", _error("Request body larger than the limit (1 MB by default)."))
            takes_text = method in BODY_METHODS or any(p.get("in") == "query" for p in operation.get("parameters", []))
            if takes_text:
                # project.api.middleware.StorableInputMiddleware: text no database can store (NUL,
                # lone surrogates) or JSON nested too deep.
                nul_status = "400" if path.startswith("/api/") else "422"
                responses.setdefault(nul_status, _error("Invalid input (e.g. a NUL character in the text)."))
            operation["responses"] = dict(sorted(responses.items()))
    return result
