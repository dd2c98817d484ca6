"""Request guards that must answer in JSON before any view runs."""

import json
from collections.abc import Callable
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException

from project.api.errors import ErrorStyle, InvalidInput, RequestTooLarge, error_response
from project.api.json_input import NUL, BodyProblem, body_problem


class RequestBodyLimitMiddleware:
    """413 with a JSON body for request bodies over ``DATA_UPLOAD_MAX_MEMORY_SIZE``.

    DRF reads the body as a stream, which Django does not size-check, so without this a client
    could post any amount of JSON. Reading ``request.body`` here applies Django's limit (and a
    declared Content-Length is checked before anything is read).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request.method in ("POST", "PUT", "PATCH") and limit is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                return self._too_large(limit)
            content_type = request.META.get("CONTENT_TYPE", "")
            # Multipart and form bodies are size-checked by Django's own parsers (the admin).
            if not content_type.startswith(("multipart/", "application/x-www-form-urlencoded")):
                try:
                    request.body  # noqa: B018  reading it enforces the limit
                except RequestDataTooBig:
                    return self._too_large(limit)
        return self.get_response(request)

    @staticmethod
    def _too_large(limit: int) -> JsonResponse:
        return error_response(
            RequestTooLarge(f"Request body is larger than the limit of {limit // 1024} KB."),
            style=ErrorStyle.EXECUTIONS,
        )


class StorableInputMiddleware:
    """Refuse, with a 4xx naming the field, a request whose text the platform could not store or
    write back: NUL in the query string, and in a JSON body NUL, lone surrogates or nesting deeper
    than ``MAX_JSON_DEPTH`` (``project.api.json_input``).

    One check at the door for every view of both APIs (DRF views and the plain async stream views
    alike, whatever each does with its body), so no create or update can let such text in and no
    view has to guard its own.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            return _refuse(request, BodyProblem(NUL, ""), _query_parameter_with_nul(query))
        if request.method in ("POST", "PUT", "PATCH"):
            problem = body_problem(request.body)
            if problem is not None:
                return _refuse(request, problem)
        return self.get_response(request)


def _query_parameter_with_nul(query: str) -> str:
    for name, value in parse_qsl(query, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return f"the query parameter {json.dumps(name)}"
    return "the query string"


def _refuse(request: HttpRequest, problem: BodyProblem, where: str | None = None) -> JsonResponse:
    """The API's own error for bad input: the executions API's validation error (400, ``detail``
    and per-field ``errors``), or the LangGraph API's 422 ``{"detail": ...}``."""
    message = f"{problem.reason}: found in {where}." if where else problem.message
    if not request.path.startswith("/api/"):
        unprocessable = APIException(message)
        unprocessable.status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
        return error_response(unprocessable, style=ErrorStyle.LANGGRAPH)
    if where or not problem.field:
        errors = {"non_field_errors": [message]}
    else:
        errors = {problem.field: [f"{problem.reason}{' (in the key)' if problem.in_key else ''}."]}
    return error_response(InvalidInput(errors), style=ErrorStyle.EXECUTIONS)
