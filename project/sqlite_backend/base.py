"""SQLite with a first-come-first-served write queue inside each process.

SQLite has one writer at a time and makes the others wait in its busy handler, which sleeps and
retries instead of queueing: under a burst of concurrent writes (150 threads creating runs at
once) a few unlucky writers lose every retry for the whole busy timeout and fail with "database
is locked". Taking a process-wide lock before ``BEGIN IMMEDIATE`` turns a process's writers into
an orderly queue, so only one writer per process (the API server, each worker) ever competes in
SQLite's busy handler.
"""

import threading

from django.db.backends.sqlite3 import base

# Longer than SQLite's own busy timeout would be pointless: after this, fall back to it.
WRITE_QUEUE_TIMEOUT_SECONDS = 20.0

_write_queue = threading.Lock()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_queue = False

    def _start_transaction_under_autocommit(self) -> None:
        self._holds_write_queue = _write_queue.acquire(timeout=WRITE_QUEUE_TIMEOUT_SECONDS)
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._leave_write_queue()
            raise

    def _leave_write_queue(self) -> None:
        if self._holds_write_queue:
            self._holds_write_queue = False
            _write_queue.release()

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._leave_write_queue()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._leave_write_queue()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._leave_write_queue()
