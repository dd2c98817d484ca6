"""Database reads from long-lived async views (streams)."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

T = TypeVar("T")


def in_executor(function: Callable[..., T], *, executor: ThreadPoolExecutor | None = None) -> Callable[..., Any]:
    """``function`` as a coroutine run in a shared executor (the loop's default unless
    ``executor`` is given), closing its connection after.

    A stream lives for minutes; Django's default (thread-sensitive) async ORM would pin one
    thread and one database connection (a pool slot on PostgreSQL) to it for all that time.
    """

    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(call, thread_sensitive=False, executor=executor)
