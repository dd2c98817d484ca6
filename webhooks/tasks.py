"""django-q2 entry point: it takes a message id and hands it to this process's senders.

The attempt runs on a small thread pool of the worker process, not in the task: a receiver that
answers slowly (up to ``WEBHOOK_TIMEOUT`` per attempt) must not hold one of the cluster's few
worker slots, which would delay the jobs queued behind it. A sender lost with its process (a
recycle, a kill) leaves its message's lease to expire, and the sweep sends it again.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from webhooks.delivery import webhook_deliver

logger = logging.getLogger(__name__)

_senders: dict[int, ThreadPoolExecutor] = {}
_senders_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    # Keyed by pid: a forked worker must not inherit its parent's (dead) threads.
    pool = _senders.get(os.getpid())
    if pool is None:
        with _senders_lock:
            pool = _senders.get(os.getpid())
            if pool is None:
                pool = _senders[os.getpid()] = ThreadPoolExecutor(
                    max_workers=max(1, settings.WEBHOOK_SENDER_THREADS),
                    thread_name_prefix="webhook-sender",
                )
    return pool


def _send(message_id: str) -> None:
    try:
        webhook_deliver(message_id=message_id)
    except Exception:  # the lease expires and the sweep tries again
        logger.exception("webhook %s: attempt failed unexpectedly", message_id)
    finally:
        connection.close()  # this thread's own connection, not left open between webhooks


def deliver(message_id: str) -> str:
    _pool().submit(_send, message_id)
    return "submitted"
