"""SQLite with a first-come-first-served write queue inside each process.

SQLite has one writer at a time and makes the others wait in its busy handler, which sleeps and
retries instead of queueing: under a burst of concurrent writes (150 threads creating runs at
once) a few unlucky writers lose every retry for the whole busy timeout and fail with "database
is locked". Taking a process-wide lock before ``BEGIN IMMEDIATE`` turns a process's writers into
an orderly queue, so only one writer per process (the API server, each worker) ever competes in
SQLite's busy handler.

An API process also keeps the connections its requests close, and lends them to the next
requests (``IdleConnections``): under ASGI a request's thread does not outlive it, so Django
opens a connection per request (``CONN_MAX_AGE=0``), and opening one (the file, Django's thirty
SQL functions, the PRAGMAs) was a sixth of the server's CPU per run.
"""

import os
import threading
from collections import defaultdict
from typing import Any

from django.db.backends.sqlite3 import base

# Longer than SQLite's own busy timeout would be pointless: after this, fall back to it.
WRITE_QUEUE_TIMEOUT_SECONDS = 20.0

_write_queue = threading.Lock()

# Idle connections kept per database file; more than this at once are closed.
IDLE_CONNECTIONS_MAX = 16

# (alias, file, inode): a connection is lent only to the file it was opened on, and not to
# another file of the same name (a test database made again).
PoolKey = tuple[str, str, int]


class IdleConnections:
    """Open connections of this process that nobody uses, not in a transaction."""

    def __init__(self, limit: int = IDLE_CONNECTIONS_MAX) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._idle: dict[PoolKey, list[Any]] = defaultdict(list)
        self._pid = os.getpid()
        # Connections a forked child inherited: never used nor closed there (SQLite's locks are
        # per process; a child closing one may think it is the last and remove the WAL files).
        self._inherited: list[Any] = []

    def _same_process(self) -> None:
        if self._pid != os.getpid():
            self._inherited.extend(conn for conns in self._idle.values() for conn in conns)
            self._idle.clear()
            self._pid = os.getpid()

    def take(self, key: PoolKey) -> Any | None:
        with self._lock:
            self._same_process()
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, key: PoolKey, conn: Any) -> bool:
        """Keep ``conn`` for the next ``take``; False if it should be closed instead."""
        with self._lock:
            self._same_process()
            idle = self._idle[key]
            if len(idle) >= self._limit:
                return False
            idle.append(conn)
            return True


idle_connections = IdleConnections()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_queue = False
    _pool_key: PoolKey | None = None

    def _connection_pool_key(self, conn_params: dict) -> PoolKey | None:
        # Only where Django would open a connection per request; workers keep theirs anyway.
        if self.settings_dict.get("CONN_MAX_AGE") != 0 or self.is_in_memory_db():
            return None
        name = str(conn_params["database"])
        if name.startswith("file:"):
            return None
        try:
            return self.alias, name, os.stat(name).st_ino
        except OSError:
            return None

    def get_new_connection(self, conn_params: dict) -> Any:
        self._pool_key = self._connection_pool_key(conn_params)
        if self._pool_key is not None:
            conn = idle_connections.take(self._pool_key)
            if conn is not None:
                return conn
        return super().get_new_connection(conn_params)

    def _start_transaction_under_autocommit(self) -> None:
        self._holds_write_queue = _write_queue.acquire(timeout=WRITE_QUEUE_TIMEOUT_SECONDS)
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]  # private Django API, not in the stubs
        except BaseException:
            self._leave_write_queue()
            raise

    def _leave_write_queue(self) -> None:
        if self._holds_write_queue:
            self._holds_write_queue = False
            _write_queue.release()

    def _commit(self) -> None:
        try:
            super()._commit()  # type: ignore[misc]  # private Django API, not in the stubs
        finally:
            self._leave_write_queue()

    def _rollback(self) -> None:
        try:
            super()._rollback()  # type: ignore[misc]  # private Django API, not in the stubs
        finally:
            self._leave_write_queue()

    def _close(self) -> None:
        try:
            conn, key = self.connection, self._pool_key
            # One closed inside a transaction is closed for real: that rolls the transaction back.
            if conn is not None and key is not None and not conn.in_transaction:
                if idle_connections.give(key, conn):
                    return
            super()._close()  # type: ignore[misc]  # private Django API, not in the stubs
        finally:
            self._leave_write_queue()
