"""Django's ASGI handler with a request's sync work in one trip to a reused thread.

Django's ``ASGIHandler`` gives every request a thread-sensitive executor of its own, so an OS
thread is started and stopped per request (about 0.2 ms of CPU, and the loop waits for the
thread to stop); and with a sync middleware chain (ours is sync on purpose, see
``settings.MIDDLEWARE``) a request goes to that thread for the chain, back to the event loop for
the innermost handler, and to the thread again for the view (DRF's are sync): three round trips
where one does, each about 0.1 ms of CPU. Here the chain is loaded in sync mode, as under WSGI,
and the whole of ``get_response`` runs in one ``sync_to_async`` call; an async view (a stream) is
run on the loop by Django's sync handler, through ``async_to_sync``, as before. Each request
borrows a single-thread executor from a pool instead of starting one. Thread-sensitive code
still runs on one thread per request, as Django requires: the view, the response's later reads
(``/wait``) and the end of the request share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler

# Idle request threads kept for the next requests: at most this many, each for at most this long
# (so a burst of streams leaves no threads behind once it is over). A request under way (an open
# stream) holds its thread, as each held one of its own before.
IDLE_THREADS_MAX = 32
IDLE_THREAD_SECONDS = 2.0

class RequestExecutor(ThreadPoolExecutor):
    """One thread, which knows when nothing submitted to it is left to run."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="asgi-request")
        self._state = threading.Lock()
        self._unfinished = 0
        self._on_idle: Callable[[], None] | None = None

    def submit(self, fn, /, *args, **kwargs):
        with self._state:
            self._unfinished += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future) -> None:
        with self._state:
            self._unfinished -= 1
            on_idle = self._on_idle if not self._unfinished else None
            if on_idle is not None:
                self._on_idle = None
        if on_idle is not None:
            on_idle()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """``callback()`` now if nothing submitted is left to run, else when the last of it ends."""
        with self._state:
            if self._unfinished:
                self._on_idle = callback
                return
        callback()


class ExecutorPool:
    """Single-thread executors lent to one request at a time; those idle for ``idle_seconds`` are
    stopped by a reaper thread of the pool's own."""

    def __init__(self, idle_max: int = IDLE_THREADS_MAX, idle_seconds: float = IDLE_THREAD_SECONDS) -> None:
        self._idle: list[tuple[float, RequestExecutor]] = []  # (returned at, executor), oldest first
        self._idle_max = idle_max
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take(self) -> RequestExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()[1]  # the most recently used: its thread is warm
        return RequestExecutor()

    def give_back(self, executor: RequestExecutor) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), executor))
            surplus = self._idle[: max(0, len(self._idle) - self._idle_max)]
            del self._idle[: len(surplus)]
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="asgi-request-reaper", daemon=True)
                self._reaper.start()
        for _, old in surplus:
            old.shutdown(wait=False)

    def stop_idle(self, older_than: float) -> int:
        """Stop the executors idle for more than ``older_than`` seconds; how many were."""
        deadline = time.monotonic() - older_than
        with self._lock:
            stale = [executor for returned, executor in self._idle if returned <= deadline]
            self._idle = [(returned, executor) for returned, executor in self._idle if returned > deadline]
        for executor in stale:
            executor.shutdown(wait=False)
        return len(stale)

    def _reap(self) -> None:
        while True:
            time.sleep(self._idle_seconds / 2)
            self.stop_idle(self._idle_seconds)


class PooledThreadASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.executors = ExecutorPool()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.executors.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        except BaseException:
            # A request ended by an error or a cancel may have left sync work running on its
            # thread: that thread is not lent to another request.
            executor.shutdown(wait=False)
            raise
        # A client that hung up makes Django cancel the request's coroutine, not the sync call it
        # awaited, which may still be running: the thread goes back to the pool once that is
        # done, never to a request that would wait behind another's work.
        executor.when_idle(lambda: self.executors.give_back(executor))

    async def get_response_async(self, request):
        # Middlewares, URL resolution and view in one call on the request's thread.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_application() -> PooledThreadASGIHandler:
    """What ``django.core.asgi.get_asgi_application`` does, with this handler."""
    django.setup(set_prefix=False)
    return PooledThreadASGIHandler()
