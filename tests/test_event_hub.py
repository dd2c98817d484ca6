"""The event hub: wake-ups of stream readers (Redis pub/sub, database poll) and its lifecycle."""

import asyncio
import contextlib
import gc
import sys
import threading
import time
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection, connections

from project.db.async_db import in_executor
from project.realtime import event_hub
from tests.conftest import until


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (runs in CI's PostgreSQL + Redis pass)")
def test_a_reader_that_comes_after_the_last_one_left_is_still_woken_through_redis():
    async def scenario() -> float:
        async with event_hub.watch("hubtest:first") as first:
            first.arm()
            await sync_to_async(event_hub.publish)("hubtest:first")
            assert await first.wait(1.5)
        # Nobody watches: the Redis listener stops within its 1 s read, the poller within 2 s.
        await asyncio.sleep(1.3)
        async with event_hub.watch("hubtest:second") as second:
            # The listener wakes every reader once it has subscribed: from then on it hears all.
            assert await second.wait(5)
            second.arm()
            started = time.monotonic()
            await sync_to_async(event_hub.publish)("hubtest:second")
            # Only Redis can wake it: no database probe is registered for this kind, and the
            # safety-net poll would take seconds.
            assert await second.wait(1.5)
            return time.monotonic() - started

    assert async_to_sync(scenario)() < 1.0


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (runs in CI's PostgreSQL + Redis pass)")
def test_one_publish_through_redis_wakes_the_readers_of_each_channel_it_names():
    async def scenario() -> None:
        async with (
            event_hub.watch("hubtest:run") as run, event_hub.watch("hubtest:thread") as thread,
            event_hub.watch("hubtest:other") as other,
        ):
            # The listener wakes every reader once it has subscribed: from then on it hears all.
            assert all([await watcher.wait(5) for watcher in (run, thread, other)])
            for watcher in (run, thread, other):
                watcher.arm()
            await sync_to_async(event_hub.publish)("hubtest:run", "hubtest:thread")
            assert await run.wait(1.5) and await thread.wait(1.5)
            assert not await other.wait(0.3)

    async_to_sync(scenario)()


# --- the hub's lifecycle ----------------------------------------------------------------------------


async def follow(channel: str) -> AsyncIterator[str]:
    """What an SSE view's body does with the hub: watch, yield, wait for a wake-up, again."""
    async with event_hub.watch(channel) as watcher:
        while True:
            watcher.arm()
            yield channel
            await watcher.wait(60)


@pytest.fixture
def problems(monkeypatch) -> list[str]:
    """Errors Python would only print: unraisable exceptions (a coroutine finalized after its loop
    closed) and the loops' exception-handler calls ("Task was destroyed but it is pending!")."""
    found: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: found.append(repr(unraisable.exc_value)))
    return found


def run_in_own_loop(scenario, problems: list[str]) -> asyncio.AbstractEventLoop:
    """``async_to_sync(scenario)()`` as the test suite and Django's test client call it: a fresh
    loop that ends by cancelling every task and closing every async generator still open."""
    loops = []

    async def wrapped() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: problems.append(context["message"]))
        loops.append(loop)
        await scenario()

    async_to_sync(wrapped)()
    return loops[0]


def test_streams_left_open_when_their_loop_ends_leave_no_task_behind_and_no_error(problems):
    # Streams whose client stopped reading but still holds them (a test keeps its response):
    # the loop's shutdown cancels the hub's task first, then closes them, in no set order.
    streams: list[AsyncIterator[str]] = []

    async def scenario() -> None:
        streams[:] = [follow(f"hubtest:open-{index}") for index in range(50)]
        for stream in streams:
            await anext(stream)
        assert event_hub.hub().open_watchers == 50 and event_hub.hub().running

    first = run_in_own_loop(scenario, problems)
    second = run_in_own_loop(scenario, problems)  # the hub of the next loop starts fresh
    gc.collect()  # finalizes whatever the first loop left pending

    for loop in (first, second):
        assert loop.is_closed()
        assert asyncio.all_tasks(loop) == set()  # nothing respawned while the loop shut down
        assert event_hub._hubs.get(loop) is None or event_hub._hubs[loop].open_watchers == 0
    assert problems == []


def test_the_hub_stops_when_the_last_watcher_leaves_and_a_later_one_starts_it_again(problems):
    versions = {"later": 1}
    event_hub.register_kind("hubprobe", lambda ids: {i: versions[i] for i in ids if i in versions})

    async def scenario() -> None:
        current = event_hub.hub()
        async with event_hub.watch("hubprobe:first"):
            assert current.running
        deadline = time.monotonic() + 5
        while current.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not current.running
        assert asyncio.all_tasks() == {asyncio.current_task()}

        async with event_hub.watch("hubprobe:later") as later:
            assert current.running
            await until(lambda: current._versions.get("hubprobe:later") == 1, message="the first poll")
            later.arm()
            versions["later"] = 2
            # Only the restarted poller can wake it (nothing publishes on Redis here).
            assert await later.wait(current._poll_interval + 3)

    run_in_own_loop(scenario, problems)
    assert problems == []


def test_a_cancelled_reader_is_always_unregistered(problems):
    async def scenario() -> None:
        entered = asyncio.Event()

        async def reader() -> None:
            async with event_hub.watch("hubtest:cancelled") as watcher:
                entered.set()
                await watcher.wait(60)

        task = asyncio.create_task(reader())
        await entered.wait()
        assert event_hub.hub().open_watchers == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert event_hub.hub().open_watchers == 0

    run_in_own_loop(scenario, problems)
    assert problems == []


@pytest.mark.django_db
def test_the_poll_reads_off_the_requests_thread_and_closes_its_connection(problems):
    seen: list[tuple[int, object]] = []

    def probe(ids: list[str]) -> dict[str, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        seen.append((threading.get_ident(), connections["default"]))  # this thread's wrapper
        return {}

    event_hub.register_kind("hubthread", probe)

    async def scenario() -> None:
        async with event_hub.watch("hubthread:x"):
            deadline = time.monotonic() + 10
            while len(seen) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    run_in_own_loop(scenario, problems)
    assert len(seen) >= 2
    for thread_id, wrapper in seen:
        # Not the thread that called async_to_sync (where thread-sensitive calls run, on the
        # connection the test itself uses), and no connection left open in the poll's thread.
        assert thread_id != threading.get_ident()
        assert wrapper.connection is None
    assert problems == []


def test_wake_ups_do_not_wait_behind_slow_stream_reads(problems, settings):
    """Streams read the database in the loop's default executor; a burst of slow reads (a
    thousand streams woken at once) must not hold up the poll that wakes every other reader."""
    # The same poll interval with or without Redis (the hub multiplies it by 20 with Redis).
    settings.EVENT_HUB_POLL_INTERVAL = 0.1 / (20 if settings.REDIS_URL else 1)
    versions = {"x": 1}
    event_hub.register_kind("hubbusy", lambda ids: {i: versions[i] for i in ids if i in versions})
    release = threading.Event()

    async def scenario() -> None:
        async with event_hub.watch("hubbusy:x") as watcher:
            await until(lambda: event_hub.hub()._versions.get("hubbusy:x") == 1, message="the first poll")
            slow_reads = [in_executor(release.wait)(10) for _ in range(40)]  # more than its threads
            blocked = asyncio.gather(*slow_reads)
            try:
                await asyncio.sleep(0.1)
                watcher.arm()
                versions["x"] = 2
                woken = await watcher.wait(1.5)
            finally:
                release.set()
                await blocked
            assert woken

    run_in_own_loop(scenario, problems)
    assert problems == []


def test_a_watcher_cancelled_as_it_is_woken_stays_cancelled():
    # Python 3.11's wait_for returned True here and lost the cancel: a stream whose client hung up
    # as the run's next event arrived went on, and on_disconnect "cancel" never cancelled the run.
    from project.realtime.event_hub import Watcher

    async def go() -> str:
        watcher = Watcher("run:x")
        waiting = asyncio.create_task(watcher.wait(5))
        await asyncio.sleep(0.01)
        watcher.wake()
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return "cancelled"
        return "cancel lost"

    assert asyncio.run(go()) == "cancelled"
