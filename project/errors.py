"""One vocabulary of errors: services raise these, the API handler renders them as JSON."""

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.csrf import csrf_failure as django_csrf_failure
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class Conflict(exceptions.APIException):
    """The request is valid but the object's state forbids it (e.g. cancelling a finished job)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class NotFound(exceptions.NotFound):
    pass


class InvalidInput(exceptions.ValidationError):
    """Bad input detected by a service rather than a serializer; rendered like a validation error."""


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


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler, with every error body carrying a human ``detail`` string.

    Validation errors keep their per-field structure under ``errors`` so programs can point at
    the field, while ``detail`` names the problem in one sentence for people.
    """
    response = exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"detail": "; ".join(_flatten_messages(data)), "errors": data}
    elif isinstance(data, list):
        response.data = {"detail": "; ".join(str(item) for item in data)}
    return response


class TooManyActive(exceptions.Throttled):
    """A per-user cap on active jobs: 429 like a throttle, with the cap in the message."""

    default_detail = "Too many active jobs."


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if _wants_html(request):
        return django_csrf_failure(request, reason)
    return JsonResponse({"detail": f"CSRF check failed: {reason}"}, status=403)


def _wants_html(request: HttpRequest) -> bool:
    return request.path.startswith("/admin/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON 404 everywhere but the admin, so API clients never parse an HTML page."""
    if _wants_html(request):
        return defaults.page_not_found(request, exception)
    # The LangGraph server's wording for an unknown route.
    return JsonResponse({"detail": "Not Found"}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_html(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "Internal server error."}, status=500)
