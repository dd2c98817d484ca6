"""The run status table: every move of ``runs.transitions`` from every status. Each allowed move
works; every other is refused and leaves the row as it was. The table in ``RunStatus``'s
docstring is exactly the moves there are."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from runs import transitions
from runs.graphs import system_assistant_id
from runs.models import RUN_DELETED as DELETED
from runs.models import RUN_TRANSITIONS, CancelAction, Run, RunStatus, Thread

LONG_AGO = timedelta(minutes=10)


@dataclass(frozen=True)
class Move:
    name: str
    sources: tuple[str, ...]
    target: str  # a status, or DELETED
    apply: Callable[[Run], bool]

    def __str__(self) -> str:
        return self.name


def _end(status: str) -> Callable[[Run], bool]:
    def end(run: Run) -> bool:
        with transaction.atomic(), connection.cursor() as cursor:
            ended, _ = transitions.run_end(
                cursor, claim=transitions.RunClaim.of(run), status=status, result={"done": True},
                error=None, now=timezone.now(),
            )
        return ended

    return end


MOVES = [
    Move(
        "claim", (RunStatus.PENDING,), RunStatus.RUNNING,
        lambda run: transitions.run_claim(run_id=run.pk, worker="test:1", now=timezone.now()) is not None,
    ),
    *(
        Move(f"end {status}", (RunStatus.RUNNING,), status, _end(status))
        for status in (RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.TIMEOUT, RunStatus.INTERRUPTED)
    ),
    Move(
        "reap", (RunStatus.RUNNING,), RunStatus.ERROR,
        lambda run: transitions.run_reap(
            run_id=run.pk, thread_id=run.thread_id, worker=run.worker, attempt=run.attempts,
            where=Q(heartbeat_at__lt=timezone.now() - LONG_AGO / 2), error={"error": "WorkerLost"},
            now=timezone.now(),
        ),
    ),
    Move(
        "interrupt pending", (RunStatus.PENDING,), RunStatus.INTERRUPTED,
        lambda run: transitions.run_interrupt_pending(run_id=run.pk, now=timezone.now()),
    ),
    Move(
        "rollback pending", (RunStatus.PENDING,), DELETED,
        lambda run: transitions.run_rollback_pending(run_id=run.pk),
    ),
    Move(
        "rollback running", (RunStatus.RUNNING,), DELETED,
        lambda run: transitions.run_rollback_running(claim=transitions.RunClaim.of(run)),
    ),
    Move(
        "release", (RunStatus.RUNNING,), RunStatus.PENDING,
        lambda run: transitions.run_release(claim=transitions.RunClaim.of(run), now=timezone.now()),
    ),
]


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create(username="owner")  # no password: hashing is slow


def make_run(owner, status: str) -> Run:
    """A run in ``status`` on a thread of its own (one running run per thread), due, with a
    heartbeat the reaper counts as lost."""
    old = timezone.now() - LONG_AGO
    return Run.objects.create(
        thread=Thread.objects.create(owner=owner), assistant_id=system_assistant_id("echo"),
        owner=owner, status=status, created_at=old, updated_at=old, heartbeat_at=old,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("start", RunStatus.values)
@pytest.mark.parametrize("move", MOVES, ids=str)
def test_each_move_from_each_status(move: Move, start: str, owner) -> None:
    run = make_run(owner, start)
    allowed = start in move.sources

    assert move.apply(run) is allowed
    after = Run.objects.filter(pk=run.pk).first()
    if not allowed:
        assert (after.status, after.updated_at) == (start, run.updated_at)  # untouched
    elif move.target == DELETED:
        assert after is None
    else:
        assert after.status == move.target
        assert (after.ended_at is not None) is (move.target in RunStatus.terminal())


def test_the_docstring_table_is_the_moves_there_are() -> None:
    documented = set(re.findall(r"^\s+(\w+) -> (\S+)\s", RunStatus.__doc__, re.MULTILINE))
    implemented = {(source, move.target) for move in MOVES for source in move.sources}
    assert documented == {(str(source), str(target)) for source, target in RUN_TRANSITIONS}
    assert documented == implemented
    # Terminal statuses never move again; only a worker's release goes back to pending.
    assert not {source for source, _ in documented} & set(RunStatus.terminal())
    assert {source for source, target in documented if target == RunStatus.PENDING} == {RunStatus.RUNNING}


@pytest.mark.django_db
@pytest.mark.parametrize("start", RunStatus.values)
def test_a_cancel_request_reaches_only_a_running_run_and_moves_no_status(start: str, owner) -> None:
    run = make_run(owner, start)
    asked = transitions.run_cancel_request(
        run_id=run.pk, action=CancelAction.ROLLBACK, now=timezone.now()
    )
    assert asked is (start == RunStatus.RUNNING)
    after = Run.objects.get(pk=run.pk)
    assert after.status == start
    assert after.cancel_action == (CancelAction.ROLLBACK if asked else "")


@pytest.mark.django_db
def test_a_run_ends_only_in_a_final_status(owner) -> None:
    run = make_run(owner, RunStatus.RUNNING)
    with pytest.raises(ValueError), connection.cursor() as cursor:
        transitions.run_end(
            cursor, claim=transitions.RunClaim.of(run), status=RunStatus.PENDING, result=None,
            error=None, now=timezone.now(),
        )
    assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING
