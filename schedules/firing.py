"""Firing schedules: the sweep every worker runs (``executions.recovery.register_sweep``).

Exactly once: a due schedule fires in one transaction that first moves its ``next_run_at`` on
with a conditional UPDATE (``WHERE next_run_at = <the due time read>``). Of several sweepers,
in one cluster or many, only one changes the row; the others change nothing and fire nothing.
The ``ScheduleFiring`` row, unique on (schedule, fire time), records the fire time once more.

A missed window fires once: after an outage (every worker down, or the clock jumping ahead)
a schedule fires for its latest fire time that has passed, and ``next_run_at`` goes to the first
one after now; the windows in between are not replayed.

On time: the sweep runs every ``EXECUTIONS_SWEEP_INTERVAL`` (5 s) in each worker, which alone
made firings 1.4 s late at the median with two clusters. So each sweep that sees a fire time
coming before its next round sets a timer for that instant (``schedules_sweep``).

Overlap: while an execution the schedule started is still pending or running, a new fire time
is skipped (``skip``) or queued (``queue``); queued firings start one at a time, in fire-time
order, once nothing of the schedule is active.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Min
from django.utils import timezone
from rest_framework.exceptions import APIException, ValidationError

from executions.models import Execution
from executions.services import execution_create
from executions.terminal import validation_messages
from schedules.cron import last_fire_at_or_before, next_fire_after
from schedules.models import FiringOutcome, FiringTrigger, Schedule, ScheduleFiring, ScheduleOverlap

logger = logging.getLogger(__name__)

# Firings one queue-overlap schedule may have waiting; later fire times are skipped meanwhile,
# so a target slower than its cron cannot pile up work without bound.
MAX_QUEUED = 10


class _AlreadyFired(Exception):
    pass


def schedules_fire_due(*, now: datetime | None = None, limit: int = 200) -> int:
    """Fire every enabled schedule whose ``next_run_at`` has come, then start the queued firings
    that may start. ``now``: the clock (tests move it); returns how many schedules fired."""
    at = now or timezone.now()
    due = list(
        Schedule.objects.due(at=at).order_by("next_run_at").values_list("pk", "next_run_at")[:limit]
    )
    fired = 0
    for schedule_id, due_at in due:
        fired += _fire(schedule_id=schedule_id, due_at=due_at, now=now or timezone.now())
    queued_firings_start()
    return fired


# Firing records kept this long: a fire time's unique key matters only while it could still fire
# (next_run_at only moves forward), and the admin shows the recent ones. An every-minute schedule
# records half a million a year otherwise.
FIRINGS_KEPT_DAYS = 30
_FIRINGS_PRUNE_EVERY = 3600.0
_firings_pruned_at: float | None = None


def schedules_sweep() -> None:
    """The schedules' part of every worker's recovery sweep: fire what is due, and when the next
    fire time comes before the next sweep, wake up for it on time; hourly, forget old firings."""
    global _firings_pruned_at
    schedules_fire_due()
    _timer_set()
    clock = time.monotonic()
    if _firings_pruned_at is None or clock - _firings_pruned_at >= _FIRINGS_PRUNE_EVERY:
        _firings_pruned_at = clock
        firings_prune(older_than=timezone.now() - timedelta(days=FIRINGS_KEPT_DAYS))


def firings_prune(*, older_than: datetime, limit: int = 5000) -> int:
    """Delete up to ``limit`` firing records made before ``older_than``, oldest first (queued
    ones wait for their turn and stay). Their executions stay."""
    ids = list(
        ScheduleFiring.objects.filter(fired_at__lt=older_than)
        .exclude(outcome=FiringOutcome.QUEUED).order_by("fired_at")
        .values_list("pk", flat=True)[:limit]
    )
    if ids:
        ScheduleFiring.objects.filter(pk__in=ids).delete()
    return len(ids)


# The fire time this process's timer is set for, if any: one timer per process at a time.
_timer_for: datetime | None = None
_timer_lock = threading.Lock()
# Past the fire time, so that a timer a little early on the database's clock still finds it due.
_TIMER_MARGIN = 0.02


def _timer_set() -> None:
    global _timer_for
    upcoming = (
        Schedule.objects.filter(enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at").values_list("next_run_at", flat=True).first()
    )
    if upcoming is None:
        return
    delay = (upcoming - timezone.now()).total_seconds()
    # Jitter makes the sweeps 0.8 to 1.2 intervals apart: anything before 1.5 is this sweep's.
    if delay > settings.EXECUTIONS_SWEEP_INTERVAL * 1.5:
        return
    with _timer_lock:
        if _timer_for is not None and _timer_for <= upcoming:
            return
        _timer_for = upcoming
    timer = threading.Timer(max(0.0, delay) + _TIMER_MARGIN, _on_time, kwargs={"at": upcoming})
    timer.daemon = True
    timer.start()


def _on_time(*, at: datetime) -> None:
    global _timer_for
    try:
        schedules_fire_due()
    except Exception:  # the next sweep fires it; a timer thread must not die noisily
        logger.warning("schedules timer for %s failed", at, exc_info=True)
    finally:
        with _timer_lock:
            if _timer_for == at:
                _timer_for = None
        connection.close()  # this thread's own connection: the thread ends here


def _fire(*, schedule_id, due_at: datetime, now: datetime) -> bool:
    next_run_at: datetime | None = None
    try:
        with transaction.atomic():
            # skip_locked: a schedule another sweeper is firing is its to fire; this one moves on
            # to the next due schedule instead of queueing behind it (PostgreSQL; SQLite has one
            # writer at a time anyway). The conditional UPDATE below stays the guarantee.
            schedule = (
                Schedule.objects.select_for_update(skip_locked=True)
                .filter(pk=schedule_id, enabled=True, next_run_at=due_at).first()
            )
            if schedule is None:
                return False
            # The latest fire time that has passed: after an outage, one firing for the last
            # window, not one per window missed.
            scheduled_for = max(due_at, last_fire_at_or_before(schedule.cron, schedule.timezone, now))
            next_run_at = next_fire_after(schedule.cron, schedule.timezone, now)
            won = Schedule.objects.filter(pk=schedule_id, enabled=True, next_run_at=due_at).update(
                next_run_at=next_run_at, last_run_at=now
            )
            if not won:
                return False
            try:
                with transaction.atomic():
                    firing = ScheduleFiring.objects.create(
                        schedule=schedule, trigger=FiringTrigger.CRON, scheduled_for=scheduled_for,
                        fired_at=now, outcome=FiringOutcome.STARTED,
                    )
            except IntegrityError:
                raise _AlreadyFired from None
            _settle(schedule, firing)
    except _AlreadyFired:
        # This fire time was recorded already: move next_run_at on all the same, start nothing.
        Schedule.objects.filter(pk=schedule_id, next_run_at=due_at).update(next_run_at=next_run_at)
        return False
    return True


def _settle(schedule: Schedule, firing: ScheduleFiring) -> None:
    """Start the firing's execution, or skip or queue it behind the schedule's active one."""
    busy = Execution.objects.filter(schedule_id=schedule.pk).active().exists()
    waiting = ScheduleFiring.objects.filter(schedule=schedule, outcome=FiringOutcome.QUEUED).count()
    if not busy and not waiting:
        _start(schedule, firing)
        return
    if schedule.overlap == ScheduleOverlap.QUEUE and waiting < MAX_QUEUED:
        firing.outcome = FiringOutcome.QUEUED
    else:
        firing.outcome = FiringOutcome.SKIPPED
        firing.error = (
            f"{waiting} earlier firings are queued already (at most {MAX_QUEUED})."
            if schedule.overlap == ScheduleOverlap.QUEUE
            else "The previous execution of this schedule was still pending or running."
        )
    firing.save(update_fields=["outcome", "error"])


def _start(schedule: Schedule, firing: ScheduleFiring) -> None:
    try:
        with transaction.atomic():
            execution = execution_create(
                owner=schedule.owner, type=schedule.type, target_id=schedule.target_id,
                inputs=schedule.inputs, config=schedule.config, webhook=schedule.webhook,
                schedule_id=schedule.pk,
            )
    except ValidationError as exc:  # the target, or its inputs, changed since the schedule was saved
        firing.outcome, firing.error = FiringOutcome.FAILED, "; ".join(validation_messages(exc.detail))
    except APIException as exc:  # the owner's active cap (429)
        firing.outcome, firing.error = FiringOutcome.FAILED, str(exc.detail)
    else:
        firing.outcome, firing.execution = FiringOutcome.STARTED, execution
    if firing.outcome == FiringOutcome.FAILED:
        logger.warning("schedule %s could not start its execution: %s", schedule.pk, firing.error)
    firing.save(update_fields=["outcome", "error", "execution"])


def queued_firings_start() -> int:
    """Start the oldest queued firing of each enabled schedule that has nothing active."""
    heads = (
        ScheduleFiring.objects.filter(outcome=FiringOutcome.QUEUED, schedule__enabled=True)
        .values("schedule_id").annotate(first=Min("scheduled_for")).values_list("schedule_id", "first")
    )
    started = 0
    for schedule_id, first in list(heads[:200]):
        with transaction.atomic():
            if Execution.objects.filter(schedule_id=schedule_id).active().exists():
                continue
            firing = (
                ScheduleFiring.objects.select_related("schedule", "schedule__owner")
                .filter(schedule_id=schedule_id, outcome=FiringOutcome.QUEUED, scheduled_for=first)
                .first()
            )
            if firing is None:
                continue
            # The claim: of two sweepers taking the same queued firing, one changes the row.
            if not ScheduleFiring.objects.filter(pk=firing.pk, outcome=FiringOutcome.QUEUED).update(
                outcome=FiringOutcome.STARTED
            ):
                continue
            _start(firing.schedule, firing)
            started += 1
    return started
