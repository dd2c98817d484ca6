"""Wake stream readers up when a job appends events.

Writers call ``publish_on_commit(*channels)`` after appending events; readers (async SSE views)
``watch(channel)`` and await new events. Event rows in the database are the only data; a wake-up
carries nothing but "look again", so a lost one costs latency, never an event.

- With ``REDIS_URL``: writers PUBLISH on Redis; each server process holds ONE pub/sub connection
  for all its streams, plus a slow database poll as a safety net.
- Without Redis (embedded mode): each server process runs ONE poller that asks the database for
  the version (last event seq) of every watched job in a single query per kind, every
  ``EVENT_HUB_POLL_INTERVAL`` seconds, however many streams are open. With local wake-ups
  (``project.realtime.local_wakeups``, on unless ``LOCAL_WAKEUPS_DIR`` is empty) writers also send the
  channel's name to every hub of this machine, each listening on a socket of its own while
  anybody watches, so readers wake at once; the poll still finds what a writer on another
  machine (PostgreSQL shared without Redis) or a lost datagram did not say.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import transaction

from project.db.async_db import in_executor
from project.realtime import local_wakeups

logger = logging.getLogger(__name__)

# The one Redis channel every wake-up goes by; its message names the hub channels woken.
WAKEUP_CHANNEL = "agentjobs:wakeups"
# Between channel names in a wake-up (they are "kind:id", never with a newline).
CHANNEL_SEPARATOR = "\n"

# kind -> function(ids) -> {id: version}; a version grows whenever the job gets a new event.
VersionProbe = Callable[[list[str]], dict[str, int]]
_version_probes: dict[str, VersionProbe] = {}

# The poll's own thread (one per process, started on first use): in the loop's default executor
# it queued behind the streams' reads, and a burst of those delayed every reader's wake-up.
_poll_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-hub-poll")


def register_kind(kind: str, probe: VersionProbe) -> None:
    """Declare how the database poller reads the event versions of jobs of ``kind``."""
    _version_probes[kind] = probe


def channel_name(kind: str, job_id: object) -> str:
    return f"{kind}:{job_id}"


# --- writers --------------------------------------------------------------------------------------

def wakeups_pushed() -> bool:
    """Whether writers wake readers themselves (Redis, or local wake-ups): a reader's own re-read
    of the database is then only a safety net and may be rare."""
    return bool(settings.REDIS_URL) or local_wakeups.enabled()


def _local_role() -> str:
    # The hubs reading the same database: the probes' versions, and so the channels, are its rows.
    return local_wakeups.role("hub", *local_wakeups.database_scope())


def publish(*channels: str) -> None:
    """Wake the readers of ``channels``: one message for all of them (a run's end wakes its
    status, its stream and its thread's: one Redis PUBLISH, or one datagram, and one message for
    every hub to read, not three)."""
    if not channels:
        return
    payload = CHANNEL_SEPARATOR.join(channels).encode()
    if not settings.REDIS_URL:
        # Readers also poll the database: without local wake-ups that is all they have.
        if len(payload) <= local_wakeups.MAX_PAYLOAD_BYTES:
            local_wakeups.send(_local_role(), payload)
        else:  # a datagram that long would arrive cut short
            for channel in channels:
                local_wakeups.send(_local_role(), channel.encode())
        return
    from project.realtime.redis_pool import redis_client

    try:
        # The process's pool, not a client per thread: under ASGI that was a connection per request.
        # A failed command drops its connection; the pool opens a fresh one next time.
        redis_client(settings.REDIS_URL).publish(WAKEUP_CHANNEL, payload)
    except Exception:  # readers fall back to their database poll
        logger.warning("could not publish a wake-up on %s", ", ".join(channels), exc_info=True)


def publish_on_commit(*channels: str) -> None:
    transaction.on_commit(lambda: publish(*channels))


def _channels(payload: bytes) -> list[str]:
    return payload.decode(errors="replace").split(CHANNEL_SEPARATOR)


# --- readers --------------------------------------------------------------------------------------


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds.

    Not ``asyncio.wait_for``: on Python 3.11, a task cancelled just as the event is set gets True
    and the cancel is lost. A stream's client that hung up as the run's next event arrived (right
    after the metadata the client waited for) then went unnoticed, and ``on_disconnect:
    "cancel"`` never cancelled its run. ``asyncio.timeout`` keeps the cancel.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


class Watcher:
    """One reader's view of one channel: ``wait`` returns once something new may be there."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._event = asyncio.Event()

    def arm(self) -> None:
        """Call before reading the database; a wake-up after this point is never missed."""
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        return await wait_event(self._event, timeout)


class Hub:
    """The wake-up machinery of one event loop: one task while anybody watches, none otherwise.

    The task (``_run``) supervises the database poller and, with Redis, the pub/sub listener.
    Both stop on their own once nobody watches; the task then ends, and the next watcher starts
    a fresh one. When the loop shuts down (``asyncio.run`` and asgiref's ``async_to_sync``
    cancel every task), the task ends with its helpers and starts nothing new: a task created
    then would be destroyed pending with the closed loop.
    """

    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = defaultdict(set)
        self._versions: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._use_redis = bool(settings.REDIS_URL)
        self._use_local = not self._use_redis and local_wakeups.enabled()
        # With Redis the poll is only a safety net for lost messages.
        base = float(getattr(settings, "EVENT_HUB_POLL_INTERVAL", 0.1))
        self._poll_interval = base * 20 if self._use_redis else base

    @property
    def open_watchers(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add(self, watcher: Watcher) -> None:
        self._watchers[watcher.channel].add(watcher)
        if not self.running:
            # Bound before the watcher's first database read, not when the task gets to run: a
            # datagram sent in between reaches the socket and is read with the others.
            listener = local_wakeups.Listener.open(_local_role()) if self._use_local else None
            try:
                # A context of its own: the task outlives the request that started it, and must
                # not keep that request's context (its thread-sensitive executor) alive.
                self._task = asyncio.get_running_loop().create_task(
                    self._run(listener), name="event-hub", context=contextvars.Context()
                )
            except BaseException:
                if listener is not None:
                    listener.close()
                raise
            if listener is not None:
                # Also when the task is cancelled before it ever ran (the loop shutting down).
                self._task.add_done_callback(lambda _task: listener.close())

    def remove(self, watcher: Watcher) -> None:
        watchers = self._watchers.get(watcher.channel)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[watcher.channel]
                self._versions.pop(watcher.channel, None)

    def _wake(self, channels: Iterable[str]) -> None:
        for channel in channels:
            for watcher in self._watchers.get(channel, ()):
                watcher.wake()

    def _read_local(self, listener: local_wakeups.Listener) -> None:
        messages = listener.drain()
        if len(messages) >= local_wakeups.QUEUE_LIMIT:
            # The socket's queue may have been full, and senders skip a full queue: any channel
            # may have lost its wake-up, so every reader looks again.
            self._wake(list(self._watchers))
            return
        self._wake({channel for message in messages for channel in _channels(message)})

    async def _run(self, listener: local_wakeups.Listener | None = None) -> None:
        if listener is None:
            await self._rounds()
            return
        loop = asyncio.get_running_loop()
        # A reader on the loop itself, no thread: a datagram wakes its channel's watchers at once.
        loop.add_reader(listener.fileno(), self._read_local, listener)
        try:
            await self._rounds()
        finally:
            loop.remove_reader(listener.fileno())

    async def _rounds(self) -> None:
        while self._watchers:
            helpers = [asyncio.create_task(self._poll_forever(), name="event-hub-poll")]
            if self._use_redis:
                helpers.append(asyncio.create_task(self._listen_forever(), name="event-hub-redis"))
            try:
                # Both helpers end when nobody watches; whichever ends first ends this round, so
                # a poller left alone never runs on without its Redis listener.
                await asyncio.wait(helpers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Cancelled (the loop is shutting down): the helpers are cancelled with us, and
                # the CancelledError ends this task without another round.
                for helper in helpers:
                    helper.cancel()
            await asyncio.wait(helpers)  # the listener closes its Redis connection
            failures = [h.exception() for h in helpers if not h.cancelled() and h.exception()]
            if failures:
                logger.error("event hub helper failed", exc_info=failures[0])
                await asyncio.sleep(1.0)  # not a tight loop of failing rounds
        # No await between the check above and the task's end: a watcher that arrives after it
        # finds the task done and starts a new one; one that arrived before got another round.

    async def _poll_forever(self) -> None:
        while self._watchers:
            await asyncio.sleep(self._poll_interval)
            try:
                await self._poll_once()
            except Exception:
                logger.warning("event hub poll failed", exc_info=True)

    async def _poll_once(self) -> None:
        by_kind: dict[str, list[str]] = defaultdict(list)
        for channel in list(self._watchers):
            kind, _, job_id = channel.partition(":")
            by_kind[kind].append(job_id)
        changed = []
        for kind, ids in by_kind.items():
            probe = _version_probes.get(kind)
            if probe is None:
                continue
            # Connection closed after: the hub lives as long as any stream, and a thread-sensitive
            # call would pin a thread and a connection for all that time.
            versions = await in_executor(probe, executor=_poll_executor)(ids)
            for job_id in ids:
                channel = channel_name(kind, job_id)
                version = versions.get(job_id, -1)
                if channel in self._watchers and self._versions.get(channel) != version:
                    # The first sighting wakes too: an event may have landed between the
                    # reader's first database read and this poll.
                    changed.append(channel)
                    self._versions[channel] = version
        self._wake(changed)

    async def _listen_forever(self) -> None:
        import redis.asyncio as aioredis

        while self._watchers:
            client = aioredis.Redis.from_url(settings.REDIS_URL)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(WAKEUP_CHANNEL)
                # Something may have happened while we were not subscribed.
                self._wake(list(self._watchers))
                while self._watchers:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._wake(_channels(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("event hub lost Redis; reconnecting", exc_info=True)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # a broken connection is dropped either way
                    logger.debug("closing the event hub's Redis connection failed", exc_info=True)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def hub() -> Hub:
    """The hub of the running event loop (one per server process in practice)."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None:
        for stale in [other for other in _hubs if other.is_closed()]:
            del _hubs[stale]
        current = _hubs[loop] = Hub()
    return current


class watch:  # a lower-case name: it reads as a function, ``async with watch(channel) as w``
    """Register a watcher for the duration of a stream; always unregistered, even on disconnect.

    A class, not an ``@asynccontextmanager``: that would be an async generator of its own, which
    the loop finalizes on shutdown alongside the stream's generator, in no set order; closed
    first, it made the stream's ``async with`` fail with "generator didn't stop after athrow()".
    """

    def __init__(self, channel: str) -> None:
        self._watcher = Watcher(channel)
        self._hub: Hub | None = None

    async def __aenter__(self) -> Watcher:
        self._hub = hub()
        try:
            self._hub.add(self._watcher)
        except BaseException:
            self._hub.remove(self._watcher)
            raise
        return self._watcher

    async def __aexit__(self, *exc_info: object) -> None:
        if self._hub is not None:
            self._hub.remove(self._watcher)
