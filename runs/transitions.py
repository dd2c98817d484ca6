"""THE place a run's status moves, and only as ``RUN_TRANSITIONS`` (``RunStatus``'s table) allows.

Each move is one conditional statement: an UPDATE (or, for a rollback, a DELETE) whose WHERE
names the statuses the move starts from, and whose row count (or RETURNING row) says whether this
call won. Nothing reads the row first, so concurrent movers (the API cancelling, the worker
ending, the reaper) never both win. A move that loses changes nothing and returns False/None.

The worker's two moves (claim and end) run for every run: their statements are written out once
(``runs.statements``) rather than composed by the ORM, and answer with RETURNING what the worker
would otherwise read back. The others are rare and use the ORM.

The worker's moves (end, rollback) and its other writes (heartbeat, events, checkpoints) are
fenced by its claim (``RunClaim``: the worker and the attempt its claim counted), in the same
WHERE: a worker that froze past the heartbeat timeout, whose run recovery ended meanwhile,
changes nothing when it wakes up.

Wake-ups: each move wakes the readers its status change concerns (``runs.wakeups``), except the
end, whose caller wakes them once the run's last events and its thread are stored too.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from checkpoints.sql import Fence
from runs import statements
from runs.models import RUN_DELETED, RUN_TRANSITIONS, CancelAction, Run, RunStatus
from runs.wakeups import run_changed, run_progressed


def _from(source: str, *targets: str) -> str:
    """``source``, the status a move to each of ``targets`` starts from, if the table has that
    move (checked once, on import: a move this module makes is one the table lists)."""
    missing = [target for target in targets if (source, target) not in RUN_TRANSITIONS]
    if missing:
        raise AssertionError(f"RUN_TRANSITIONS has no move from {source} to {missing}")
    return str(source)  # the plain value, as the written-out statements pass it


_CLAIM_FROM = _from(RunStatus.PENDING, RunStatus.RUNNING)
_END_FROM = _from(RunStatus.RUNNING, *RunStatus.terminal())
_REAP_FROM = _from(RunStatus.RUNNING, RunStatus.ERROR)
_INTERRUPT_PENDING_FROM = _from(RunStatus.PENDING, RunStatus.INTERRUPTED)
_ROLLBACK_PENDING_FROM = _from(RunStatus.PENDING, RUN_DELETED)
_ROLLBACK_RUNNING_FROM = _from(RunStatus.RUNNING, RUN_DELETED)
_RELEASE_FROM = _from(RunStatus.RUNNING, RunStatus.PENDING)


@dataclass(frozen=True)
class RunClaim:
    """One claim of a run: the worker that took it and the attempt its claim counted. Every
    write the worker makes for the run names it, so that once the run is no longer running under
    this claim (recovery ended it while the worker was frozen) those writes change nothing."""

    run_id: UUID
    worker: str
    attempt: int

    @classmethod
    def of(cls, run: Run) -> RunClaim:
        """The claim ``run_claim`` made: the run it returned."""
        return cls(run.pk, run.worker, run.attempts)

    def holds(self) -> Q:
        """The WHERE of an ORM write of this claim's worker, with the status it expects."""
        return Q(pk=self.run_id, worker=self.worker, attempts=self.attempt)

    def fence(self) -> Fence:
        """The condition of a fenced INSERT (events, checkpoints): the claim still holds."""
        return (
            statements.claim_held_sql(connection.vendor),
            statements.claim_held_params(self.run_id, self.worker, self.attempt),
        )


def run_claim(*, run_id: UUID | str, worker: str, now: datetime) -> Run | None:
    """pending -> running, in FIFO order per thread and never beside another running run: the
    run if it is pending, due (``created_at`` passed) and its thread's oldest due pending run, and
    no other run of its thread is running (the partial unique index refuses a second one). The
    claimed run comes back with its assistant's graph id; None if this call did not claim it."""
    at = Run._meta.get_field("created_at").get_db_prep_value(now, connection)
    pk = Run._meta.pk.get_db_prep_value(run_id, connection)
    params = [
        RunStatus.RUNNING.value, at, at, at, worker,
        pk, _CLAIM_FROM, at, RunStatus.PENDING.value, at,
    ]
    returning = statements.can_return()
    # One statement needs no transaction of its own (on PostgreSQL a BEGIN and a COMMIT are two
    # more round trips); inside the caller's, a savepoint keeps a refusal from spoiling it.
    savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with savepoint, connection.cursor() as cursor:
            cursor.execute(statements.claim_sql(connection.vendor, returning), params)
            # All rows fetched: SQLite ends an autocommit statement (and its write lock) then.
            rows = cursor.fetchall() if returning else None
            claimed = bool(rows) if returning else cursor.rowcount == 1
    except IntegrityError:  # the thread already has a running run; its end dispatches this one
        return None
    if not claimed:
        return None
    run_progressed(run_id)
    if rows:
        run = statements.claimed_run(rows[0])
        run.worker = worker  # known: no column more to return
        return run
    return Run.objects.select_related("assistant").get(pk=run_id)


def run_end(
    cursor: Any, *, claim: RunClaim, status: str, result: Any, error: Any, now: datetime
) -> tuple[bool, str | None]:
    """running -> ``status`` (success, error, timeout or interrupted) under ``claim``, on the
    caller's cursor inside its transaction. Returns whether this call ended it (not if recovery
    ended it first), and the run's ``on_completion``
    as stored now (None if the run is gone): read once the row is locked, since a stream client
    that hung up may have asked for its stateless thread to go when the run ends."""
    if status not in RunStatus.terminal():
        raise ValueError(f"a run ends in one of {RunStatus.terminal()}, not {status!r}")
    returning = statements.can_return()
    at = statements.prep(Run, "ended_at", now)
    pk = statements.prep(Run, "run_id", claim.run_id)
    cursor.execute(
        statements.run_end_sql(connection.vendor, returning),
        [
            status, statements.prep(Run, "result", result), statements.prep(Run, "error", error),
            at, at, None, pk, _END_FROM, claim.worker, claim.attempt,
        ],
    )
    if returning:
        rows = cursor.fetchall()
        if rows:
            return True, rows[0][0]
        ended = False
    else:
        ended = cursor.rowcount == 1
    cursor.execute(statements.run_on_completion_sql(connection.vendor), [pk])
    rows = cursor.fetchall()
    return ended, rows[0][0] if rows else None


def run_reap(
    *, run_id: UUID | str, thread_id: UUID | str, worker: str, attempt: int,
    where: Q, error: dict, now: datetime,
) -> bool:
    """running -> error, for the claim (``worker``, ``attempt``) of a run whose worker is lost, if
    ``where`` still holds: its heartbeat still old (a beat since means the worker lives: the move
    loses), or its claim one a worker process seen dead made. That worker's later writes, if it
    wakes up, change nothing."""
    won = Run.objects.filter(
        where, pk=run_id, status=_REAP_FROM, worker=worker, attempts=attempt
    ).update(
        status=RunStatus.ERROR, error=error, result={"__error__": error},
        ended_at=now, updated_at=now, heartbeat_at=None,
    )
    if won:
        run_changed(run_id, thread_id)
    return bool(won)


def run_interrupt_pending(*, run_id: UUID | str, now: datetime) -> bool:
    """pending -> interrupted: a cancel (action interrupt) before a worker took the run."""
    won = Run.objects.filter(pk=run_id, status=_INTERRUPT_PENDING_FROM).update(
        status=RunStatus.INTERRUPTED, ended_at=now, updated_at=now
    )
    if won:
        run_changed(run_id)  # a pending run has no event: its readers learn of it this way
    return bool(won)


def run_rollback_pending(*, run_id: UUID | str) -> bool:
    """pending -> (deleted): a cancel with action rollback before a worker took the run."""
    deleted, _ = Run.objects.filter(pk=run_id, status=_ROLLBACK_PENDING_FROM).delete()
    if deleted:
        run_changed(run_id)  # its stream readers close
    return bool(deleted)


def run_rollback_running(*, claim: RunClaim) -> bool:
    """running -> (deleted): the worker's end of a run cancelled with action rollback (its
    checkpoints are deleted by the caller), under its ``claim``. A run already ended by someone
    else (the reaper) keeps its end."""
    deleted, _ = Run.objects.filter(claim.holds(), status=_ROLLBACK_RUNNING_FROM).delete()
    return bool(deleted)


def run_release(*, claim: RunClaim, now: datetime) -> bool:
    """running -> pending: the worker stopping (a deploy) gives back a run it could not finish
    within its grace, under its ``claim``; the caller deletes the checkpoints the attempt wrote in
    the same transaction and enqueues the run on commit. The attempt stays counted (the next
    claim's fence is a new attempt), but a run has no attempt limit: nothing is used up."""
    won = Run.objects.filter(claim.holds(), status=_RELEASE_FROM).update(
        status=RunStatus.PENDING, started_at=None, heartbeat_at=None, worker="", updated_at=now,
    )
    if won:
        run_changed(claim.run_id)
    return bool(won)


def run_cancel_request(*, run_id: UUID | str, action: str, now: datetime) -> bool:
    """Ask a running run's worker to stop (``cancel_action``): the first half of cancelling a
    running run, which stays running until its worker ends it (``run_end`` interrupted, or
    ``run_rollback_running``) within its cancel-check interval. No status moves here."""
    if action not in CancelAction.values:
        raise ValueError(f"a cancel action is one of {CancelAction.values}, not {action!r}")
    return bool(
        Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
            cancel_action=action, cancel_requested_at=now, updated_at=now
        )
    )
