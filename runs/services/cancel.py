"""Cancelling runs: one, a thread's, or all of a user's in a status.

Two-phase, as the lifecycle rules say: a pending run ends at once (``interrupted``, or deleted by
a rollback); a running one gets ``cancel_action`` and its worker stops the graph within its
cancel-check interval. Each thread's cancels are decided with the thread row locked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs import dispatch, transitions
from runs.completion import run_ended_notify
from runs.errors import NO_MATCHING_RUNS_TO_CANCEL, NO_RUNS_TO_CANCEL, NotFound, Unprocessable
from runs.models import CancelAction, Run, RunStatus, Thread
from runs.services.inputs import parse_uuid
from runs.services.threads import thread_status_now


def run_cancel_locked(*, run: Run, action: str) -> bool:
    """Cancel one run inside a transaction holding its thread's lock; True if it was active.

    A pending run ends at once (``interrupted``, or deleted for a rollback). A running one gets
    ``cancel_action`` and its worker stops the graph within its cancel-check interval.
    """
    now = timezone.now()
    if action == CancelAction.ROLLBACK:
        if transitions.run_rollback_pending(run_id=run.pk):
            return True
    elif transitions.run_interrupt_pending(run_id=run.pk, now=now):
        if (run.kwargs or {}).get("webhook"):
            run_ended_notify(run_id=run.pk)
        return True
    return transitions.run_cancel_request(run_id=run.pk, action=action, now=now)


def runs_cancel(*, runs: Iterable[Run], action: str = CancelAction.INTERRUPT) -> list[Run]:
    """Cancel the active ones among ``runs``; returns those that were cancelled."""
    cancelled = []
    by_thread: dict[uuid.UUID, list[Run]] = {}
    for run in runs:
        by_thread.setdefault(run.thread_id, []).append(run)
    for thread_id, thread_runs in by_thread.items():
        with transaction.atomic():
            if not Thread.objects.select_for_update().filter(pk=thread_id).exists():
                continue
            for run in thread_runs:
                if run_cancel_locked(run=run, action=action):
                    cancelled.append(run)
            status = thread_status_now(Thread.objects.get(pk=thread_id))
            Thread.objects.filter(pk=thread_id).update(status=status)
            transaction.on_commit(partial(dispatch.thread_dispatch_next, thread_id))
    return cancelled


def run_cancel(*, user, thread_id: Any, run_id: Any, action: str = CancelAction.INTERRUPT) -> Run:
    thread_pk = parse_uuid(thread_id, "thread")
    run_pk = parse_uuid(run_id, "run")
    run = Run.objects.filter(pk=run_pk, thread_id=thread_pk, owner=user).first()
    if run is None:
        raise NotFound(NO_RUNS_TO_CANCEL)
    if not runs_cancel(runs=[run], action=action):
        raise NotFound(NO_MATCHING_RUNS_TO_CANCEL)
    return run


def runs_cancel_many(
    *,
    user,
    thread_id: Any = None,
    run_ids: list | None = None,
    status: str | None = None,
    action: str = CancelAction.INTERRUPT,
) -> int:
    """Bulk cancel: the given runs of a thread, or every run of ``user`` in ``status``."""
    if status is not None and (thread_id is not None or run_ids is not None):
        raise Unprocessable(
            "When providing a 'status', 'thread_id' and 'run_ids' must be omitted. "
            "Provide either a status or a thread_id and run_ids."
        )
    queryset = Run.objects.filter(owner=user)
    if status is not None:
        statuses = RunStatus.active() if status == "all" else (status,)
        queryset = queryset.filter(status__in=statuses)
    else:
        if thread_id is None or not run_ids:
            raise Unprocessable("Provide either a status or a thread_id and run_ids.")
        queryset = queryset.filter(
            thread_id=parse_uuid(thread_id, "thread"),
            pk__in=[parse_uuid(value, "run") for value in run_ids],
        )
    runs = list(queryset.filter(status__in=RunStatus.active()))
    if not runs and status is None:
        raise NotFound(NO_RUNS_TO_CANCEL)
    return len(runs_cancel(runs=runs, action=action))

