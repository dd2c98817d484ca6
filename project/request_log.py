"""One log line and the HTTP metrics per request: ``RequestLogMiddleware``, first in
``MIDDLEWARE`` so it sees every answer, static files and errors included.

Sync-only like the project's other middleware: under ASGI the whole chain then runs in the
request's one thread (see the note in ``project.settings``). For a stream it measures the time
to the response's headers, not the stream's length.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from project.telemetry import http_answered

logger = logging.getLogger("agentjobs.http")


# A regex group or a path converter, written the OpenAPI way: (?P<pk>[^/.]+) and <str:pk> → {pk}.
_PARAMETER = re.compile(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>")


def route_of(request: HttpRequest) -> str:
    """The URL pattern that answered, as ``/api/v1/executions/{pk}`` (a bounded set of names,
    unlike paths with ids), or ``unmatched``."""
    match = getattr(request, "resolver_match", None)
    if match is None or not match.route:
        return "unmatched"
    route = match.route.replace("^", "").replace("$", "").replace("\\Z", "").replace("/?", "")
    return "/" + _PARAMETER.sub(lambda m: "{" + (m.group(1) or m.group(2)) + "}", route)


class RequestLogMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        route = route_of(request)
        http_answered(route=route, method=request.method or "", status=response.status_code, seconds=seconds)
        logger.info(
            "%s %s %d %.1fms", request.method, request.get_full_path(), response.status_code,
            seconds * 1000,
            extra={
                "event": "http_request", "method": request.method, "path": request.path,
                "route": route, "status": response.status_code,
                "duration_ms": round(seconds * 1000, 2), "client": request.META.get("REMOTE_ADDR"),
            },
        )
        return response
