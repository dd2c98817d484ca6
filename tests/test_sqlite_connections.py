"""The API process's SQLite connections: lent again after a request closes them, never with a
transaction open, never across a fork."""

from __future__ import annotations

import os
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from project.db.sqlite_backend.base import IdleConnections

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("os.environ.get('DATABASE_URL')", reason="SQLite only"),
]


def raw_connection_in_a_new_thread() -> object:
    """What a request does under ASGI: a thread of its own that opens, uses and closes."""
    seen = []

    def request() -> None:
        User.objects.count()
        seen.append(connection.connection)
        connection.close()

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    return seen[0]


def test_a_closed_connection_is_lent_to_the_next_request():
    assert raw_connection_in_a_new_thread() is raw_connection_in_a_new_thread()


def test_a_connection_closed_inside_a_transaction_is_closed_and_rolled_back():
    lent = raw_connection_in_a_new_thread()
    kept = []

    def request() -> None:
        try:
            with transaction.atomic():
                User.objects.create(username="never-committed")
                kept.append(connection.connection)
                connection.close()  # e.g. the client went away mid-request
        except Exception:  # noqa: BLE001 whatever the closed connection raises; the row must be gone
            pass

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    assert kept == [lent]
    assert raw_connection_in_a_new_thread() is not lent
    assert not User.objects.filter(username="never-committed").exists()


def test_a_forked_child_neither_uses_nor_closes_its_parents_connections():
    idle = IdleConnections()
    key = ("default", "db", 1)
    sentinel = object()
    assert idle.give(key, sentinel)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, b"1" if idle.take(key) is None and idle._inherited == [sentinel] else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert idle.take(key) is sentinel  # the parent's own is still there
