"""Event-hub channels of runs and threads, and how the hub's database poll reads their versions.

Writers (the worker, cancel, delete) call ``run_changed`` / ``thread_changed`` inside the
transaction that stored the change, and the worker ``run_progressed`` when its run started or
stored events; stream readers ``watch`` ``run_channel`` or ``thread_channel``, and ``/wait`` and
``/join`` ``run_status_channel``, which a run's progress does not wake (``project.realtime.event_hub``).
A version only has to change when something a reader waits for happened: a run's version moves
with its newest event and its status (a pending run cancelled has no event), a run status's with
its status, a thread's with its newest event.
"""

from __future__ import annotations

from uuid import UUID

from django.db.models import Max

from project.realtime.event_hub import channel_name, publish_on_commit, register_kind
from runs.models import Run, RunStatus, Thread

RUN_KIND = "run"
RUN_STATUS_KIND = "run-status"
THREAD_KIND = "thread"

_STATUS_INDEX = {status: index for index, status in enumerate(RunStatus.values, start=1)}


def run_channel(run_id: UUID | str) -> str:
    return channel_name(RUN_KIND, run_id)


def run_status_channel(run_id: UUID | str) -> str:
    return channel_name(RUN_STATUS_KIND, run_id)


def thread_channel(thread_id: UUID | str) -> str:
    return channel_name(THREAD_KIND, thread_id)


def run_changed(run_id: UUID | str, thread_id: UUID | str | None = None) -> None:
    """Wake the readers of a run (and of its thread) once the current transaction commits: it
    may have ended, been cancelled or be gone."""
    publish_on_commit(run_status_channel(run_id), *_progress_channels(run_id, thread_id))


def run_progressed(run_id: UUID | str, thread_id: UUID | str | None = None) -> None:
    """Wake the stream readers of a run (and of its thread) once the current transaction commits:
    it started or stored events, nothing a /wait waits for. Those read the run's row at every
    wake-up, and a run's progress would wake them several times for nothing."""
    publish_on_commit(*_progress_channels(run_id, thread_id))


def _progress_channels(run_id: UUID | str, thread_id: UUID | str | None) -> list[str]:
    channels = [run_channel(run_id)]
    if thread_id is not None:
        channels.append(thread_channel(thread_id))
    return channels


def thread_changed(thread_id: UUID | str) -> None:
    publish_on_commit(thread_channel(thread_id))


def _run_versions(ids: list[str]) -> dict[str, int]:
    rows = Run.objects.filter(pk__in=ids).annotate(last=Max("events__id")).values_list(
        "pk", "status", "last"
    )
    # Event ids grow, so (newest id, status) packed in one number changes whenever either does.
    return {str(pk): (last or 0) * 8 + _STATUS_INDEX.get(status, 0) for pk, status, last in rows}


def _run_status_versions(ids: list[str]) -> dict[str, int]:
    rows = Run.objects.filter(pk__in=ids).values_list("pk", "status")
    return {str(pk): _STATUS_INDEX.get(status, 0) for pk, status in rows}


def _thread_versions(ids: list[str]) -> dict[str, int]:
    # An existing thread without events is version 0, not missing: its deletion must change the
    # version too, since idle thread streams learn of it only through the hub.
    rows = Thread.objects.filter(pk__in=ids).annotate(last=Max("runs__events__id")).values_list(
        "pk", "last"
    )
    return {str(thread_id): last or 0 for thread_id, last in rows}


register_kind(RUN_KIND, _run_versions)
register_kind(RUN_STATUS_KIND, _run_status_versions)
register_kind(THREAD_KIND, _thread_versions)
