"""The process's shared Redis pool under more concurrent users than it has connections."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings

from project.realtime.redis_pool import SharedConnectionPool

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL, reason="needs REDIS_URL (runs in CI's PostgreSQL + Redis pass)"
)


def test_more_concurrent_commands_than_connections_wait_instead_of_failing() -> None:
    import redis

    pool = SharedConnectionPool.from_url(settings.REDIS_URL, max_connections=5)
    client = redis.Redis(connection_pool=pool)
    errors: list[BaseException] = []
    start = threading.Barrier(40)

    def slow_command() -> None:
        try:
            start.wait()
            # Holds its connection for a moment, so 40 threads need more than 5 at once.
            client.blpop(["redis-pool-test-never-pushed"], timeout=0.2)
        except BaseException as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=slow_command) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert pool.max_connections == 5
