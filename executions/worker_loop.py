"""A worker process's long-lived event loop, where its jobs that mostly wait run side by side.

django-q2's worker runs one task at a time in its main thread. A graph run spends nearly all its
time waiting (a model API, a tool), so a task here only claims the run and hands it to this loop,
in a thread of its own, and returns: the worker goes back to the broker while the run goes on.
How many jobs of each kind the loop may hold (``RUNS_CONCURRENCY_PER_WORKER`` for graph runs) is
its capacity: the worker reads the broker only while every kind has room
(``executions.cluster.BrokerLink``), so a full process leaves the queue to the others instead of
taking tasks it would hold back.

Sync work the jobs hand to the loop's default executor (a graph's sync nodes) runs in a thread
pool of the same size, so a sync node that sleeps does not hold up the others. A job that blocks
the loop itself (sync work inside an ``async def``) holds up every job of the process: a monitor
thread logs it, with the graph's node and thread it finds on the loop's stack, once it has
blocked for ``WORKER_LOOP_BLOCK_WARN_SECONDS``.

On stop (SIGTERM to the cluster, or a worker recycled) the worker stops reading the broker,
waits up to ``WORKER_GRACE_SECONDS`` for the jobs in flight, then has each job left release
itself at once (``release``): a graph run goes back to the queue rather than waiting for the
heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

# How often the loop proves it is turning, and how often the monitor looks.
TICK_SECONDS = 0.25
# How long jobs asked to release themselves get to record it before the process goes anyway.
RELEASE_SECONDS = 10.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop (as uvicorn picks for the API) where installed: its thread hand-offs and loop turns
    cost less CPU than asyncio's own loop, and a run takes a few milliseconds of them."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Job:
    """One job on the loop: its task, and what it does when told to release itself."""

    def __init__(self, kind: str, label: str) -> None:
        self.kind = kind
        self.label = label
        self.task: asyncio.Task | None = None
        # Set by the job (a graph run: stop the graph, give the run back to the queue).
        self.release: Callable[[], None] | None = None


class WorkerLoop:
    """The event loop thread of a worker process, with a capacity per kind of job."""

    def __init__(self, capacity: dict[str, int], *, block_warn: float) -> None:
        self.capacity = {kind: max(1, int(limit)) for kind, limit in capacity.items()}
        self._held = dict.fromkeys(self.capacity, 0)
        self._room = threading.Condition()
        self.jobs: set[Job] = set()
        self.loop = new_event_loop()
        pool = max(self.capacity.values())
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=pool, thread_name_prefix="loop-sync")
        )
        self.block_warn = block_warn
        self._turned_at = time.monotonic()
        self._thread = threading.Thread(target=self._serve, name="worker-loop", daemon=True)
        self._thread.start()
        if block_warn > 0:
            threading.Thread(target=self._monitor, name="worker-loop-monitor", daemon=True).start()

    # --- capacity -------------------------------------------------------------------------------

    def has_room(self) -> bool:
        with self._room:
            return all(self._held[kind] < limit for kind, limit in self.capacity.items())

    def wait_for_room(self, timeout: float) -> bool:
        """Wait until every kind has room, at most ``timeout`` seconds; whether it has."""
        with self._room:
            return self._room.wait_for(
                lambda: all(self._held[kind] < limit for kind, limit in self.capacity.items()), timeout
            )

    def take(self, kind: str) -> None:
        """A slot of ``kind``, waiting for one (the broker is read only when there is room, so
        this waits only with several tasks leased at once, ``Q_BULK``)."""
        with self._room:
            self._room.wait_for(lambda: self._held[kind] < self.capacity[kind])
            self._held[kind] += 1

    def give(self, kind: str) -> None:
        with self._room:
            self._held[kind] -= 1
            self._room.notify_all()

    def held(self, kind: str | None = None) -> int:
        with self._room:
            return sum(self._held.values()) if kind is None else self._held[kind]

    # --- jobs -----------------------------------------------------------------------------------

    def spawn(
        self, kind: str, label: str, work: Callable[[Job], Coroutine[Any, Any, Any]]
    ) -> concurrent.futures.Future:
        """Run ``work(job)`` on the loop in a slot of ``kind`` the caller took (``take``); the slot
        is given back when it ends."""
        job = Job(kind, label)

        async def main() -> Any:
            job.task = asyncio.current_task()
            self.jobs.add(job)
            try:
                return await work(job)
            finally:
                self.jobs.discard(job)

        try:
            future = asyncio.run_coroutine_threadsafe(main(), self.loop)
        except BaseException:
            self.give(kind)
            raise

        def ended(future: concurrent.futures.Future) -> None:
            self.give(kind)
            if not future.cancelled() and future.exception() is not None:
                logger.error("%s failed", label, exc_info=future.exception())

        future.add_done_callback(ended)
        return future

    def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the jobs in flight; have those left release themselves
        and wait for that (``RELEASE_SECONDS`` at most). Returns how many were released."""
        deadline = time.monotonic() + grace
        with self._room:
            self._room.wait_for(lambda: sum(self._held.values()) == 0, max(0.0, deadline - time.monotonic()))
        left = self.held()
        if not left:
            return 0
        logger.warning("%d jobs still running after the %.0f s grace: released to the queue", left, grace)

        def release_all() -> None:
            for job in list(self.jobs):
                if job.release is not None:
                    job.release()
                elif job.task is not None:
                    job.task.cancel()

        self.loop.call_soon_threadsafe(release_all)
        with self._room:
            self._room.wait_for(lambda: sum(self._held.values()) == 0, RELEASE_SECONDS)
        return left

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

    # --- the loop and its monitor ----------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._tick)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _tick(self) -> None:
        self._turned_at = time.monotonic()
        self.loop.call_later(TICK_SECONDS, self._tick)

    def _monitor(self) -> None:
        reported = 0.0
        while self._thread.is_alive():
            time.sleep(TICK_SECONDS)
            turned_at = self._turned_at
            blocked = time.monotonic() - turned_at
            if blocked < self.block_warn or reported == turned_at:
                continue
            reported = turned_at  # once per block
            logger.warning(
                "the worker's event loop has been blocked for %.1f s by %s: every job of this "
                "process waits meanwhile (sync work in an async node belongs in a sync node or "
                "asyncio.to_thread)", blocked, self.blocker(),
            )

    def blocker(self) -> str:
        """What the loop thread is doing: the graph node and thread found on its stack (langgraph's
        task being run), and the innermost frame."""
        frame = sys._current_frames().get(self._thread.ident or -1)
        if frame is None:
            return "(unknown)"
        where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        node = ""
        while frame is not None:
            # A graph node's task runs langgraph's RunnableCallable.ainvoke with the node's config.
            config = frame.f_locals.get("config")
            metadata = config.get("metadata") if isinstance(config, dict) else None
            if isinstance(metadata, dict) and "langgraph_node" in metadata:
                configurable = config.get("configurable") or {}  # type: ignore[union-attr]  # a dict, checked above
                graph = metadata.get("graph_id") or metadata.get("assistant_id") or "?"
                thread = configurable.get("thread_id") or metadata.get("thread_id") or "?"
                run = metadata.get("run_id", "?")
                node = f"graph {graph} node {metadata['langgraph_node']!r} (thread {thread}, run {run}) "
                break
            frame = frame.f_back
        return f"{node}at {where}"


_current: WorkerLoop | None = None


def start(capacity: dict[str, int], *, block_warn: float) -> WorkerLoop:
    """Start this process's loop (a worker process, once)."""
    global _current
    if _current is None:
        _current = WorkerLoop(capacity, block_warn=block_warn)
    return _current


def current() -> WorkerLoop | None:
    """This process's loop, if it is a worker that runs one; jobs run inline otherwise (tests,
    ``Q_CLUSTER`` sync mode)."""
    return _current


def forget() -> None:
    """Stop and forget this process's loop (a worker at its end)."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None
