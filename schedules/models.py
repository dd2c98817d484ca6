"""Execution schedules: a target, its inputs and a cron expression; each firing starts an
ordinary execution carrying the schedule's id.

The schedule row is the truth about when it fires next (``next_run_at``): every worker's sweep
looks for due rows, and moving ``next_run_at`` on is a conditional UPDATE that only one sweeper
wins, so a fire time starts one execution however many clusters run. ``ScheduleFiring`` records
each fire time once (unique on schedule and fire time) with what became of it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from executions.models import ExecutionType


class ScheduleOverlap(models.TextChoices):
    """What a fire time does while the schedule's previous execution is still pending or running."""

    SKIP = "skip", "Skip"
    """Nothing runs for that fire time; the firing is recorded as skipped."""
    QUEUE = "queue", "Queue"
    """The firing waits and starts once the previous execution has ended, in fire-time order."""


class ScheduleQuerySet(models.QuerySet):
    def owned_by(self, user) -> ScheduleQuerySet:
        return self.filter(owner=user)

    def due(self, *, at) -> ScheduleQuerySet:
        return self.filter(enabled=True, next_run_at__lte=at)


class Schedule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules"
    )
    type = models.CharField(max_length=16, choices=ExecutionType.choices)
    target_id = models.CharField(max_length=200)
    inputs = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    cron = models.CharField(max_length=200, help_text="5 fields (minute hour day month weekday) or a macro.")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA name the cron is read in.")
    enabled = models.BooleanField(default=True)
    overlap = models.CharField(
        max_length=8, choices=ScheduleOverlap.choices, default=ScheduleOverlap.SKIP
    )
    webhook = models.CharField(
        max_length=2048, blank=True, default="",
        help_text="Given to each execution it starts: POSTed to when that execution ends.",
    )
    next_run_at = models.DateTimeField(
        null=True, blank=True, help_text="The next fire time; empty while disabled."
    )
    last_run_at = models.DateTimeField(
        null=True, blank=True, help_text="When it last fired (by its cron or a manual trigger)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="schedule_owner_created"),
            models.Index(fields=["next_run_at"], name="schedule_next_run"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(type__in=ExecutionType.values), name="schedule_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(overlap__in=ScheduleOverlap.values), name="schedule_overlap_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.target_id} {self.cron} ({self.timezone})"


class FiringTrigger(models.TextChoices):
    CRON = "cron", "Cron"
    MANUAL = "manual", "Manual"


class FiringOutcome(models.TextChoices):
    """What became of one fire time.

    Transitions: ``queued -> started`` (the previous execution ended) and ``queued -> failed``;
    the others are final when recorded.
    """

    STARTED = "started", "Started"
    """An execution was created for it."""
    SKIPPED = "skipped", "Skipped"
    """The previous execution was still active and the schedule's overlap is skip."""
    QUEUED = "queued", "Queued"
    """Waiting for the previous execution to end (overlap queue)."""
    FAILED = "failed", "Failed"
    """The execution could not be created (target gone, inputs no longer valid, active cap)."""


class ScheduleFiring(models.Model):
    """One fire time of a schedule, recorded once."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="firings")
    trigger = models.CharField(max_length=8, choices=FiringTrigger.choices)
    scheduled_for = models.DateTimeField(help_text="The fire time (the trigger's time for manual).")
    fired_at = models.DateTimeField(help_text="When the sweep (or the trigger) recorded it.")
    outcome = models.CharField(max_length=8, choices=FiringOutcome.choices)
    execution = models.ForeignKey(
        "executions.Execution", on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["schedule", "-scheduled_for"]
        constraints = [
            # The key that makes a cron fire time start at most one execution.
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"], condition=Q(trigger="cron"),
                name="schedule_firing_once",
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=FiringOutcome.values), name="schedule_firing_outcome_valid"
            ),
        ]
        indexes = [
            models.Index(
                fields=["schedule", "scheduled_for"], condition=Q(outcome="queued"),
                name="schedule_firing_queued",
            ),
            # The hourly prune of old records (schedules.firing.firings_prune).
            models.Index(fields=["fired_at"], name="schedule_firing_fired_at"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.scheduled_for:%Y-%m-%d %H:%M} {self.outcome}"
