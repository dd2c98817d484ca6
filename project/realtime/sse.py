"""Server-sent events: the framing, and what every event-stream view does before its stream opens.

Event streams are plain async Django views returning a ``StreamingHttpResponse`` (DRF would buffer
them), so they do themselves what DRF does for the other views. All of them, the executions' and
runs' API streams and the admin pages' status streams, go through here:

- ``event_stream_view`` wraps the view: a 405 for another method, and any API error raised before
  the stream starts answered as JSON in the API's style (``project.api.errors``);
- ``stream_client`` (API key, or a logged-in session with Django's CSRF check on unsafe methods)
  and ``staff_stream_user`` (the admin's pages) say who is asking;
- ``stream_create_throttle`` is the API's "create" throttle, for the streams that create a run;
- ``stream_open`` holds one of the user's ``STREAMS_MAX_PER_USER`` open-stream slots, counted in
  the shared cache (Redis when configured) so the cap holds across every server process, until the
  response closes, however it ends.

The framing is byte-compatible with the LangGraph server (CRLF, compact JSON).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import (
    APIException,
    AuthenticationFailed,
    NotAuthenticated,
    PermissionDenied,
    Throttled,
)

from project.api.auth import (
    INVALID_API_KEY,
    APIKeyAuthentication,
    raw_key_from_headers,
    user_for_api_key,
)
from project.api.errors import ErrorStyle, MethodNotAllowed, TooManyStreams, error_response
from project.api.throttling import CreateRateThrottle
from project.db.async_db import in_executor

HEARTBEAT = b": heartbeat\r\n\r\n"
HEARTBEAT_INTERVAL = 5.0


# --- framing -------------------------------------------------------------------------------------


def encode_data(data: Any) -> bytes:
    try:
        return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # What orjson refuses, e.g. a lone surrogate in text stored before the API refused it:
        # json writes it as an escape rather than failing the stream.
        return json.dumps(data, default=str, ensure_ascii=True, separators=(",", ":")).encode()


def sse_event(event: str, data: Any = None, *, event_id: str | int | None = None, raw: bytes | None = None) -> bytes:
    """One SSE event; ``raw`` is already-encoded JSON (stored events are replayed untouched)."""
    payload = raw if raw is not None else encode_data(data)
    frame = b"event: " + event.encode() + b"\r\ndata: " + payload + b"\r\n"
    if event_id is not None:
        frame += b"id: " + str(event_id).encode() + b"\r\n"
    return frame + b"\r\n"


class EventStreamResponse(StreamingHttpResponse):
    def __init__(self, stream: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(stream, content_type="text/event-stream; charset=utf-8", **kwargs)
        self["Cache-Control"] = "no-store"
        # Tell nginx-style proxies not to buffer, or events arrive in lumps.
        self["X-Accel-Buffering"] = "no"


# --- the view ------------------------------------------------------------------------------------

AsyncView = Callable[..., Awaitable[HttpResponseBase]]


def event_stream_view(
    *,
    method: str = "GET",
    errors: ErrorStyle = ErrorStyle.EXECUTIONS,
    method_not_allowed: str | None = None,
) -> Callable[[AsyncView], AsyncView]:
    """Make ``view(request, ...)`` an event-stream view taking ``method``.

    Another method is a 405 (``method_not_allowed`` its message, DRF's by default); an
    ``APIException`` (or ``Http404``) the view raises is answered in the ``errors`` style. The view
    is exempt from the CSRF middleware, as DRF's are: ``stream_client`` checks the sessions that
    need it and lets API keys through.
    """

    def decorate(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method != method:
                    raise MethodNotAllowed(
                        request.method or "", allow=method, detail=method_not_allowed
                    )
                return await view(request, *args, **kwargs)
            except (APIException, Http404) as exc:
                return error_response(exc, style=errors)

        return csrf_exempt(wrapper)

    return decorate


# --- who is asking -------------------------------------------------------------------------------


class StreamClient(NamedTuple):
    user: Any
    # A logged-in browser session rather than an API key.
    by_session: bool


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> str:
        return reason


def _unauthenticated(exc: APIException, request: HttpRequest) -> APIException:
    # A 401 says how to authenticate, as DRF's views do.
    header = APIKeyAuthentication().authenticate_header(request)
    exc.auth_header = header  # type: ignore[attr-defined]
    return exc


async def stream_client(request: HttpRequest, *, unsafe: bool = False) -> StreamClient:
    """Who opens this stream: the owner of its API key, as everywhere in the API, or a logged-in
    session's user (a browser on the same origin), with Django's CSRF check when ``unsafe`` (a
    POST), as DRF's session authentication does. Raises the 401 or 403 otherwise."""
    raw_key = raw_key_from_headers(request.headers)
    if raw_key is not None:
        user = await in_executor(user_for_api_key)(raw_key)
        if user is None:
            raise _unauthenticated(AuthenticationFailed(INVALID_API_KEY), request)
        return StreamClient(user, by_session=False)
    user = await request.auser()
    # The session lookup ran in this request's own thread: give that connection back now rather
    # than hold it for the whole stream.
    await sync_to_async(connections.close_all)()
    if not user.is_authenticated:
        raise _unauthenticated(NotAuthenticated(), request)
    if unsafe:
        check = _CsrfCheck(lambda _request: None)  # type: ignore[arg-type]
        check.process_request(request)
        reason = check.process_view(request, None, (), {})  # type: ignore[arg-type]
        if reason:
            raise PermissionDenied(f"CSRF Failed: {reason}")
    return StreamClient(user, by_session=True)


def staff_check(
    request: HttpRequest, *, may_view: Callable[[HttpRequest], bool], refusal: str
) -> Any:
    """The staff user of an admin page's script (sync: it reads the session and permissions), or a
    403 ``PermissionDenied``: the script needs that, not the login page, when the session ends."""
    user: Any = request.user
    if not (user.is_active and user.is_staff):
        raise PermissionDenied("Staff only.")
    if not may_view(request):
        raise PermissionDenied(refusal)
    return user


async def staff_stream_user(
    request: HttpRequest, *, may_view: Callable[[HttpRequest], bool], refusal: str
) -> Any:
    """``staff_check`` for a stream, which then holds no database connection."""

    def check() -> Any:
        try:
            return staff_check(request, may_view=may_view, refusal=refusal)
        finally:
            connections.close_all()

    return await sync_to_async(check)()


# --- how often -----------------------------------------------------------------------------------


def _create_throttle(request: HttpRequest, user: Any) -> None:
    throttle = CreateRateThrottle()
    # The throttle keys on request.user; here that is the stream client's user, not the session's.
    if not throttle.allow_request(
        SimpleNamespace(user=user, META=request.META), SimpleNamespace(throttle_scope="create")
    ):
        raise Throttled(throttle.wait())


async def stream_create_throttle(request: HttpRequest, user: Any) -> None:
    """The API's "create" throttle (its scope and rate, on the shared cache) for a stream that
    creates: raises ``Throttled`` (429 with ``Retry-After``) over the rate."""
    await in_executor(_create_throttle)(request, user)


# --- how many ------------------------------------------------------------------------------------

# A process that dies with streams open leaves its counts behind; they expire with the key.
COUNTER_TTL_SECONDS = 3600


def _slot_key(user_id: object) -> str:
    return f"agentjobs:open-streams:{user_id}"


def _acquire_slot(user_id: object) -> bool:
    limit = settings.STREAMS_MAX_PER_USER
    if not limit:
        return True
    key = _slot_key(user_id)
    cache.add(key, 0, COUNTER_TTL_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, COUNTER_TTL_SECONDS)
        count = 1
    if count > limit:
        _release_slot(user_id)
        return False
    cache.touch(key, COUNTER_TTL_SECONDS)
    return True


def _release_slot(user_id: object) -> None:
    if not settings.STREAMS_MAX_PER_USER:
        return
    try:
        if cache.decr(_slot_key(user_id)) < 0:
            cache.set(_slot_key(user_id), 0, COUNTER_TTL_SECONDS)
    except ValueError:
        pass


async def stream_open(
    user: Any, start: Callable[[], Awaitable[HttpResponseBase]]
) -> HttpResponseBase:
    """The response ``start()`` makes, holding one of ``user``'s open-stream slots until it
    closes; ``TooManyStreams`` (429) when every slot is taken. What ``start`` raises, or a
    response of it that is no stream, gives the slot back at once."""
    if not await sync_to_async(_acquire_slot)(user.pk):
        raise TooManyStreams(
            f"You already have {settings.STREAMS_MAX_PER_USER} open streams "
            "(STREAMS_MAX_PER_USER); close some first."
        )
    release = functools.partial(_release_slot, user.pk)
    try:
        response = await start()
    except BaseException:
        await sync_to_async(release)()
        raise
    if not isinstance(response, EventStreamResponse):
        await sync_to_async(release)()
        return response
    # Django calls resource closers when the response is closed: after the last byte, on a
    # client disconnect, and also when the body was never iterated at all.
    response._resource_closers.append(release)  # type: ignore[attr-defined]
    return response
