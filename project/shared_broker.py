"""One django-q2 broker per process, shared by every app that queues work."""

from __future__ import annotations

import os
import threading

from django.db import router
from django_q.brokers import Broker, get_broker
from django_q.conf import Conf

# pid -> broker. async_task builds a new broker (a new Redis connection) per call unless handed
# one. One per process, not per thread: under ASGI every request runs in a thread of its own, so a
# thread-local broker was a new connection per request. Keyed by pid so a forked worker builds
# its own. Both brokers are thread-safe (Redis: a connection pool; ORM: Django's connections).
# Shared by executions, runs (``runs.dispatch``) and webhooks.
_brokers: dict[int, Broker] = {}
_brokers_lock = threading.Lock()


def shared_broker() -> Broker:
    """This process's broker, for ``async_task(..., broker=shared_broker())``."""
    broker = _brokers.get(os.getpid())
    if broker is None:
        with _brokers_lock:
            broker = _brokers.get(os.getpid())
            if broker is None:
                broker = _brokers[os.getpid()] = get_broker()
    return broker


def forget_broker() -> None:
    """After a broker failure: the next ``shared_broker()`` builds a new one."""
    _brokers.pop(os.getpid(), None)


def queue_shares_database(model: type) -> bool:
    """Whether queue messages are rows of the database ``model`` is written to (the ORM broker),
    so that they can be inserted in the transaction that writes the object they carry."""
    return bool(Conf.ORM) and not Conf.SYNC and Conf.ORM == router.db_for_write(model)
