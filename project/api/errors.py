"""One vocabulary of errors, and the one place that turns an exception into an error response.

Services and views raise exceptions (these classes, DRF's, ``runs.errors``); ``error_reply`` decides
the status, body and headers, in one of two styles:

- ``ErrorStyle.EXECUTIONS``, the Executions API's (and every other route's but the Agent Server
  API's): DRF's bodies, each with a human ``detail`` string; validation errors keep their per-field
  structure under ``errors``.
- ``ErrorStyle.LANGGRAPH``, the Agent Server API's: always exactly ``{"detail": "..."}``, like the
  real LangGraph server.

Everything else here only wraps it: the DRF exception handlers (``api_exception_handler`` is the
default one; the LangGraph views name ``langgraph_exception_handler``), ``error_response`` for the
plain async views (event streams) and Django's 404/500/CSRF views.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.csrf import csrf_failure as django_csrf_failure
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback


class ErrorStyle(enum.Enum):
    EXECUTIONS = "executions"
    LANGGRAPH = "langgraph"


# --- the vocabulary -------------------------------------------------------------------------------


class Conflict(exceptions.APIException):
    """The request is valid but the object's state forbids it (e.g. cancelling a finished job)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class NotFound(exceptions.NotFound):
    pass


class BadRequest(exceptions.APIException):
    """A 400 with one message, for input that is not a body field (a header, a query parameter)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"


class InvalidInput(exceptions.ValidationError):
    """Bad input detected by a service rather than a serializer; rendered like a validation error."""


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


class TooManyActive(exceptions.Throttled):
    """A per-user cap on active jobs: 429 like a throttle, with the cap in the message."""

    default_detail = "Too many active jobs."


class TooManyStreams(exceptions.APIException):
    """A per-user cap on open event streams; no Retry-After: a slot frees when a stream closes."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_streams"


class MethodNotAllowed(exceptions.MethodNotAllowed):
    """DRF's 405, carrying the method the route takes for the ``Allow`` header (DRF views add it
    themselves; plain async views have no one else to)."""

    def __init__(self, method: str, *, allow: str, detail: str | None = None) -> None:
        super().__init__(method, detail)
        self.allow = allow


# The Agent Server's words for a body that is not JSON.
INVALID_JSON = "Invalid JSON in request body"


# --- the renderer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorReply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _flatten_messages(data: Any, path: str = "") -> list[str]:
    if isinstance(data, dict):
        messages = []
        for key, value in data.items():
            child = key if not path else f"{path}.{key}"
            if key == "non_field_errors":
                child = path
            messages.extend(_flatten_messages(value, child))
        return messages
    if isinstance(data, list):
        messages = []
        for index, value in enumerate(data):
            if isinstance(value, (dict, list)):
                messages.extend(_flatten_messages(value, f"{path}[{index}]"))
            else:
                messages.extend(_flatten_messages(value, path))
        return messages
    return [f"{path}: {data}" if path else str(data)]


def _executions_body(exc: exceptions.APIException) -> Any:
    detail = exc.detail
    if isinstance(exc, exceptions.ValidationError):
        # ``detail`` names the problem in one sentence for people; ``errors`` points programs at
        # the field.
        return {"detail": "; ".join(_flatten_messages(detail)), "errors": detail}
    if isinstance(detail, list):
        return {"detail": "; ".join(str(item) for item in detail)}
    if isinstance(detail, dict):
        return detail
    return {"detail": detail}


def _langgraph_body(exc: exceptions.APIException) -> dict[str, str]:
    detail = exc.detail
    return {"detail": json.dumps(detail) if isinstance(detail, (list, dict)) else str(detail)}


def error_reply(exc: BaseException, *, style: ErrorStyle) -> ErrorReply | None:
    """The status, body and headers answering ``exc`` in ``style``; None when ``exc`` is no API
    error but a bug (it should propagate to the server's 500)."""
    langgraph = style is ErrorStyle.LANGGRAPH
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not Found") if langgraph else exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    elif langgraph and isinstance(exc, exceptions.ParseError):
        # The real server answers a body it cannot parse with a 422 of its own words.
        exc = exceptions.APIException(INVALID_JSON)
        exc.status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    if not isinstance(exc, exceptions.APIException):
        return None
    headers: dict[str, str] = {}
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        # The LangGraph API rounds up, so a client that waits that long is let in; the Executions
        # API keeps DRF's whole seconds.
        headers["Retry-After"] = str(math.ceil(wait) if langgraph else int(wait))
    allow = getattr(exc, "allow", None)
    if allow:
        headers["Allow"] = allow
    body = _langgraph_body(exc) if langgraph else _executions_body(exc)
    return ErrorReply(exc.status_code, body, headers)


def _drf_response(exc: Exception, style: ErrorStyle) -> Response | None:
    reply = error_reply(exc, style=style)
    if reply is None:
        return None
    set_rollback()
    return Response(reply.body, status=reply.status, headers=reply.headers)


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER``: the Executions API's style."""
    return _drf_response(exc, ErrorStyle.EXECUTIONS)


def langgraph_exception_handler(exc: Exception, context: dict) -> Response | None:
    """The exception handler of the Agent Server API's DRF views."""
    return _drf_response(exc, ErrorStyle.LANGGRAPH)


def error_response(exc: BaseException, *, style: ErrorStyle) -> JsonResponse:
    """The JSON answer of a plain (non-DRF) view to ``exc``; ``exc`` itself is raised again when it
    is no API error."""
    reply = error_reply(exc, style=style)
    if reply is None:
        raise exc
    return JsonResponse(reply.body, status=reply.status, headers=reply.headers, safe=False)


# --- Django's own error views ---------------------------------------------------------------------


def _wants_html(request: HttpRequest) -> bool:
    return request.path.startswith("/admin/")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if _wants_html(request):
        return django_csrf_failure(request, reason)
    return error_response(
        exceptions.PermissionDenied(f"CSRF check failed: {reason}"), style=ErrorStyle.EXECUTIONS
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON 404 everywhere but the admin, so API clients never parse an HTML page."""
    if _wants_html(request):
        return defaults.page_not_found(request, exception)
    # The LangGraph server's wording for an unknown route, on both APIs.
    return error_response(Http404(), style=ErrorStyle.LANGGRAPH)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_html(request):
        return defaults.server_error(request)
    return error_response(
        exceptions.APIException("Internal server error."), style=ErrorStyle.EXECUTIONS
    )
