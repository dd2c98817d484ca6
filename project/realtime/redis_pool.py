"""One Redis connection pool per process, however many threads the server runs requests in.

Under ASGI, Django runs each request's sync code in a thread of its own, and anything kept per
thread (``threading.local``, Django's per-thread cache handles) is rebuilt per request: a new
Redis connection, its handshake (``HELLO``/``CLIENT SETINFO``) and a socket left to the garbage
collector, for every request. redis-py clients and pools are thread-safe, so one pool per process
serves all threads. Pools are keyed by process id: a forked worker builds its own instead of
using sockets it shares with its parent.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

MAX_CONNECTIONS = int(os.environ.get("REDIS_MAX_CONNECTIONS", "200"))
CONNECTION_WAIT_SECONDS = 10.0

_lock = threading.Lock()
_pools: dict[tuple, redis.ConnectionPool] = {}


class SharedConnectionPool(redis.ConnectionPool):
    """``CACHES[...]["OPTIONS"]["pool_class"]``: Django's ``RedisCache`` makes a new client, and so
    a new pool, for each thread; this hands every one of them the process's pool for the URL."""

    # Not an instance of this class: the process's shared pool, whatever class that is. Django's
    # RedisCache only calls from_url and uses what it gets as a pool.
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:  # type: ignore[override]
        key = (os.getpid(), url, tuple(sorted((name, repr(value)) for name, value in kwargs.items())))
        pool = _pools.get(key)
        if pool is None:
            with _lock:
                pool = _pools.get(key)
                if pool is None:
                    # Blocking: redis-py's default pool fails at 100 connections in use
                    # ("Too many connections"), and a burst of concurrent requests each needing
                    # the cache (throttles) got 500s; waiting a moment for a free one is right.
                    kwargs.setdefault("max_connections", MAX_CONNECTIONS)
                    kwargs.setdefault("timeout", CONNECTION_WAIT_SECONDS)
                    pool = _pools[key] = redis.BlockingConnectionPool.from_url(url, **kwargs)
        return pool


_clients: dict[tuple[int, str], redis.Redis] = {}


def redis_client(url: str) -> redis.Redis:
    """This process's client for ``url`` (thread-safe: each command borrows a pooled connection)."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = redis.Redis(connection_pool=SharedConnectionPool.from_url(url))
    return client
