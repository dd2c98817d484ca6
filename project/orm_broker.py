"""django-q2's ORM broker, with the processes that dequeue woken by a datagram when a task is queued.

The stock broker's pusher finds a new task on its next poll of the queue table, ``Q_POLL`` seconds
at worst after an empty one, and that pickup was the largest share of a ``runs.wait`` without
Redis. Here ``enqueue`` also sends a wake-up (``project.realtime.local_wakeups``) to the processes
that dequeue from the same queue on the same database (each worker of ``executions.cluster``; the
role keeps django-q2's name, "pusher") once the enqueue's transaction commits, and an idle
``dequeue`` waits on its own socket for up to ``Q_POLL`` instead of sleeping. The poll stays: a
worker on another machine (PostgreSQL shared by several hosts) still finds the task, only later.

The queue statements are django-q2's, written out: composing them through the ORM cost several
times what SQLite takes to run them (~450 of ~480 µs per dequeue), three times per task. Same
table, same lease: a task is taken by moving its ``lock`` forward by ``Q_RETRY`` seconds, only if
the lock is still what the SELECT read, so clusters sharing the queue never take it twice.
"""

from __future__ import annotations

import os
from datetime import datetime
from functools import cache
from time import sleep

from django.db import connections, transaction
from django.db.transaction import TransactionManagementError
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

from project.realtime import local_wakeups


@cache
def _statements(alias: str) -> dict[str, str]:
    connection = connections[alias]
    quote = connection.ops.quote_name
    table = quote(OrmQ._meta.db_table)
    pk, key, payload, lock = (
        quote(OrmQ._meta.get_field(name).column) for name in ("id", "key", "payload", "lock")
    )
    returning = f" RETURNING {pk}" if connection.features.can_return_columns_from_insert else ""
    return {
        "enqueue": f"INSERT INTO {table} ({key}, {payload}, {lock}) VALUES (%s, %s, %s){returning}",
        # No ORDER BY, as django-q2's: which queued task goes first is the database's choice.
        "select": f"SELECT {pk}, {payload}, {lock} FROM {table} WHERE {key} = %s AND {lock} < %s LIMIT %s",
        "lease": f"UPDATE {table} SET {lock} = %s WHERE {pk} = %s AND {lock} = %s",
        "delete": f"DELETE FROM {table} WHERE {pk} = %s",
    }


class ORMBroker(ORM):
    """Q_CLUSTER ``broker_class`` when there is no Redis; same queue table and locking as ORM."""

    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key=list_key)
        self._listeners: dict[int, local_wakeups.Listener | None] = {}

    def __setstate__(self, state) -> None:  # spawned (not forked) processes unpickle the broker
        super().__setstate__(state)
        self._listeners = {}

    def _queue_key(self) -> str:
        # django-q2's enqueue: list_key may be None (in a test setup), OrmQ.key may not.
        return self.list_key or Conf.CLUSTER_NAME

    def _role(self) -> str:
        return local_wakeups.role("pusher", *local_wakeups.database_scope(Conf.ORM), self._queue_key())

    def _listener(self) -> local_wakeups.Listener | None:
        # One per process: the sentinel builds the broker and forks the pusher (and may fork a new
        # one after a crash); each pusher listens on a socket of its own, bound on first use.
        pid = os.getpid()
        if pid not in self._listeners:
            self._listeners[pid] = local_wakeups.Listener.open(self._role())
        return self._listeners[pid]

    def _wake_pushers(self) -> None:
        local_wakeups.send(self._role())

    def _at(self, moment: datetime) -> str | None:
        return connections[Conf.ORM].ops.adapt_datetimefield_value(moment)

    def enqueue(self, task: str) -> int:
        # Unlike django-q2's, no close_old_connections() first: under ASGI (no persistent
        # connections) that closed the request's connection, to open a new one for this INSERT.
        # Django checks connections around every request, django-q2 before every task.
        connection = connections[Conf.ORM]
        with connection.cursor() as cursor:
            cursor.execute(_statements(Conf.ORM)["enqueue"], [self._queue_key(), task, self._at(timezone.now())])
            task_id = cursor.fetchone()[0] if connection.features.can_return_columns_from_insert else cursor.lastrowid
        if local_wakeups.enabled():
            try:
                # Once the task is visible to other connections: executions enqueue inside the
                # transaction that creates the row. Outside one, on_commit runs it at once.
                transaction.on_commit(self._wake_pushers, using=Conf.ORM)
            except TransactionManagementError:
                # Manual transaction management, where on_commit has no say: a wake-up too early
                # only sends the pusher to its next poll.
                self._wake_pushers()
        return task_id

    def dequeue(self) -> list[tuple[int, str]] | None:
        listener = self._listener()
        if listener is not None:
            # Wake-ups sent before this point are for tasks committed before the query below,
            # which finds them; one sent during or after it stays queued and ends the wait.
            listener.drain()
        tasks, contended = self._lease()
        if tasks or contended:
            # Another worker woken by the same datagram leased what we saw: there may be more
            # queued, so the caller looks again at once rather than after a wait.
            return tasks
        if listener is not None:
            listener.wait(Conf.POLL)
        else:
            sleep(Conf.POLL)
        return None

    def _lease(self) -> tuple[list[tuple[int, str]], bool]:
        """Up to ``Conf.BULK`` queued tasks whose lock has passed, each leased by moving its lock
        forward, unless another process moved it first (django-q2's dequeue without its sleep);
        and whether that happened."""
        self.get_connection()  # the pusher is long-lived: drop a stale or broken connection first
        statements = _statements(Conf.ORM)
        connection = connections[Conf.ORM]
        with connection.cursor() as cursor:
            cursor.execute(statements["select"], [self.list_key, self._at(timezone.now()), Conf.BULK])
            rows = cursor.fetchall()
            leased = []
            for task_id, payload, lock in rows:
                # The lock as read, not as a datetime made of it: equal whatever the column type.
                cursor.execute(statements["lease"], [self._at(self.timeout(task_id)), task_id, lock])
                if cursor.rowcount == 1:
                    leased.append((task_id, payload))
        return leased, len(leased) < len(rows)

    def delete(self, task_id: int) -> None:
        self.get_connection()  # the monitor is long-lived too
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(_statements(Conf.ORM)["delete"], [task_id])
