"""Wake-ups of stream readers through Redis pub/sub."""

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings

from project import event_hub


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
            second.arm()
            await asyncio.sleep(0.3)  # let the listener subscribe
            started = time.monotonic()
            await sync_to_async(event_hub.publish)("hubtest:second")
            # Only Redis can wake it: no database probe is registered for this kind, and the
            # safety-net poll would take seconds.
            assert await second.wait(1.5)
            return time.monotonic() - started

    assert async_to_sync(scenario)() < 1.0
