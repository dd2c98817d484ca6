"""Per-user cap on open event streams, counted in the shared cache (Redis when configured), so it
holds across every server process."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse, JsonResponse

# A process that dies with streams open leaves its counts behind; they expire with the key.
COUNTER_TTL_SECONDS = 3600


def _key(user_id: object) -> str:
    return f"agentjobs:open-streams:{user_id}"


def _acquire(user_id: object) -> bool:
    limit = settings.STREAMS_MAX_PER_USER
    if not limit:
        return True
    key = _key(user_id)
    cache.add(key, 0, COUNTER_TTL_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, COUNTER_TTL_SECONDS)
        count = 1
    if count > limit:
        _release(user_id)
        return False
    cache.touch(key, COUNTER_TTL_SECONDS)
    return True


def _release(user_id: object) -> None:
    if not settings.STREAMS_MAX_PER_USER:
        return
    try:
        if cache.decr(_key(user_id)) < 0:
            cache.set(_key(user_id), 0, COUNTER_TTL_SECONDS)
    except ValueError:
        pass


def too_many_streams() -> JsonResponse:
    return JsonResponse(
        {
            "detail": f"You already have {settings.STREAMS_MAX_PER_USER} open streams "
            "(STREAMS_MAX_PER_USER); close some first."
        },
        status=429,
    )


async def stream_slot(user_id: object) -> Callable[[], None] | None:
    """Take one of the user's stream slots: the release function, or None when all are taken.

    Give the release to ``hold_slot`` so it runs when the response closes, however it ends.
    """
    from asgiref.sync import sync_to_async

    if not await sync_to_async(_acquire)(user_id):
        return None
    return lambda: _release(user_id)


def hold_slot(response: HttpResponse, release: Callable[[], None]) -> HttpResponse:
    # Django calls resource closers when the response is closed: after the last byte, on a
    # client disconnect, and also when the body was never iterated at all.
    response._resource_closers.append(release)
    return response
