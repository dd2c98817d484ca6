"""Request guards that must answer in JSON before any view runs."""

import json
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

from project.errors import ErrorStyle, RequestTooLarge, error_response


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


class NulCharacterMiddleware:
    """Refuse text with a NUL character (in the JSON body or the query string) with a clear 4xx.

    PostgreSQL cannot store U+0000 in text or JSON and would fail the request with a 500 deep in
    a query; SQLite would store it. Refusing it everywhere keeps both databases alike. The body
    is parsed only when its bytes contain the JSON escape, so ordinary requests pay one search.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            return self._refuse(request, "the query string")
        if request.method in ("POST", "PUT", "PATCH"):
            body = request.body
            if b"\x00" in body or (b"\\u0000" in body and _json_has_nul(body)):
                return self._refuse(request, "the request body")
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, where: str) -> JsonResponse:
        # The executions API answers bad input with 400; the LangGraph API with 422, as its
        # real server does for invalid requests.
        status = 400 if request.path.startswith("/api/") else 422
        return JsonResponse({"detail": f"Text may not contain the NUL character (U+0000): found in {where}."}, status=status)


def _json_has_nul(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False  # the parser will answer the malformed JSON itself
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
