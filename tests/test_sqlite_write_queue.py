"""SQLite's write lock, as the process-wide write queue of ``project.db.sqlite_backend`` hands it out:
a burst of concurrent transactions all commit one after another, however briefly SQLite itself
would wait, and a writer that fails or hangs up passes its turn on at once. (Single statements in
autocommit mode take no turn: they meet SQLite's busy handler directly.)

Checked against the backend with each piece removed: without the queue the burst gets "database
is locked"; without the release on rollback or on close the next transaction waits the queue's
whole timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from itertools import pairwise

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections, transaction

from project.db.sqlite_backend import base

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("os.environ.get('DATABASE_URL')", reason="SQLite only"),
]

WRITERS = 8
TRANSACTIONS_EACH = 4
HOLD_SECONDS = 0.03
# SQLite's own wait for its lock in this test: a writer queued behind more than a few others
# would lose in SQLite's busy handler and get "database is locked".
BUSY_TIMEOUT_MS = 100


@pytest.fixture
def impatient_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """New connections wait only ``BUSY_TIMEOUT_MS`` in SQLite's busy handler, and none is lent
    from before (those wait 20 s)."""
    options = dict(connections.settings["default"]["OPTIONS"])
    options["timeout"] = BUSY_TIMEOUT_MS / 1000
    options["init_command"] = f"PRAGMA journal_mode=WAL;PRAGMA busy_timeout={BUSY_TIMEOUT_MS};"
    monkeypatch.setitem(connections.settings["default"], "OPTIONS", options)
    monkeypatch.setattr(base, "idle_connections", base.IdleConnections())


def in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Run ``work(i)`` in ``count`` threads started together, each with its own connection;
    the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(timeout=10)
            work(index)
        except BaseException as exc:  # noqa: BLE001  reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_a_burst_of_writers_all_commit_one_at_a_time(impatient_sqlite):
    held: list[tuple[float, float]] = []

    def writer(index: int) -> None:
        for n in range(TRANSACTIONS_EACH):
            with transaction.atomic():
                began = time.monotonic()
                User.objects.create(username=f"writer-{index}-{n}")
                time.sleep(HOLD_SECONDS)  # a transaction doing some work while it holds the lock
                held.append((began, time.monotonic()))

    started = time.monotonic()
    errors = in_threads(writer, WRITERS)

    # Without the queue, writers waiting behind three others gave up: "database is locked".
    assert errors == []
    assert User.objects.filter(username__startswith="writer-").count() == WRITERS * TRANSACTIONS_EACH
    # Serialised: no two transactions held the lock at once...
    held.sort()
    assert all(end <= next_began for (_, end), (next_began, _) in pairwise(held))
    # ...and the queue wasted little time between them (SQLite's busy handler sleeps in steps
    # of up to 100 ms; a loaded machine adds its own delays, hence the margin).
    assert time.monotonic() - started < WRITERS * TRANSACTIONS_EACH * HOLD_SECONDS * 3 + 1


def take_turns_after(failing: Callable[[], None]) -> float:
    """Seconds a transaction in another thread waited for its turn after ``failing()`` ran in a
    thread whose connection stays open meanwhile (a worker's does)."""
    failed, next_done = threading.Event(), threading.Event()
    waited: list[float] = []

    def turn(index: int) -> None:
        if index == 0:
            failing()
            failed.set()
            assert next_done.wait(timeout=30)
        else:
            assert failed.wait(timeout=10)
            began = time.monotonic()
            with transaction.atomic():  # the transactions queue, single statements do not
                User.objects.create(username=f"next-{failing.__name__}")
            waited.append(time.monotonic() - began)
            next_done.set()

    assert in_threads(turn, 2) == []
    return waited[0]


def test_a_writer_that_fails_or_hangs_up_lets_the_next_one_in_at_once(impatient_sqlite):
    def rolled_back() -> None:
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            User.objects.create(username="rolled-back")
            1 / 0  # noqa: B018

    def hung_up() -> None:
        # A client gone mid-request: its connection is closed inside the transaction, which
        # rolls it back.
        with transaction.atomic():
            User.objects.create(username="hung-up")
            connection.close()

    for failing in (rolled_back, hung_up):
        waited = take_turns_after(failing)
        # Well under the queue's own timeout (20 s), which a turn never given back would cost.
        assert waited < 2
    assert set(User.objects.values_list("username", flat=True)) == {"next-rolled_back", "next-hung_up"}
    assert not base._write_queue.locked()
