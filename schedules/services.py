"""Every write to schedules made on behalf of users: API, admin and management commands.

A schedule's target, inputs and config are checked as an execution's would be
(``executions.services.execution_request_validate``) when it is saved, so a firing fails only
when the target changed since. Its executions are started by ``schedules.firing``.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from executions.models import Execution
from executions.services import execution_create, execution_request_validate
from project.api.errors import InvalidInput
from schedules.cron import CronInvalid, cron_check, next_fire_after, timezone_check
from schedules.models import (
    FiringOutcome,
    FiringTrigger,
    Schedule,
    ScheduleFiring,
    ScheduleOverlap,
)
from webhooks.destinations import WebhookUrlInvalid, webhook_url_check

# What a PATCH may change; anything else in its body is refused.
EDITABLE_FIELDS = frozenset(
    {"type", "target_id", "inputs", "config", "cron", "timezone", "enabled", "overlap", "webhook"}
)


def _checked_timing(cron: Any, tz: Any) -> tuple[str, str]:
    errors: dict[str, list[str]] = {}
    try:
        cron = cron_check(cron)
    except CronInvalid as exc:
        errors["cron"] = [str(exc)]
    try:
        tz = timezone_check(tz)
    except CronInvalid as exc:
        errors["timezone"] = [str(exc)]
    if errors:
        raise InvalidInput(errors)
    return cron, tz


def _checked_overlap(overlap: Any) -> str:
    if overlap not in ScheduleOverlap.values:
        raise InvalidInput({"overlap": [f"Must be one of: {', '.join(ScheduleOverlap.values)}."]})
    return overlap


def _checked_webhook(webhook: Any) -> str:
    if webhook in (None, ""):
        return ""
    try:
        return webhook_url_check(webhook)
    except WebhookUrlInvalid as exc:
        raise InvalidInput({"webhook": [str(exc)]}) from None


def schedule_create(
    *,
    owner,
    type: str,
    target_id: str,
    cron: str,
    timezone_name: str = "UTC",
    inputs: dict | None = None,
    config: dict | None = None,
    enabled: bool = True,
    overlap: str = ScheduleOverlap.SKIP,
    webhook: str = "",
) -> Schedule:
    """Check and store a schedule; its first fire time is the cron's next one after now."""
    cron, timezone_name = _checked_timing(cron, timezone_name)
    inputs, config = execution_request_validate(
        type=type, target_id=target_id, inputs=inputs if inputs is not None else {},
        config=config if config is not None else {},
    )
    return Schedule.objects.create(
        owner=owner, type=type, target_id=target_id, inputs=inputs, config=config, cron=cron,
        timezone=timezone_name, enabled=enabled, overlap=_checked_overlap(overlap),
        webhook=_checked_webhook(webhook),
        next_run_at=next_fire_after(cron, timezone_name, timezone.now()) if enabled else None,
    )


def schedule_update(*, schedule: Schedule, changes: dict[str, Any]) -> Schedule:
    """Change some of a schedule's fields (``EDITABLE_FIELDS``), checked as at create.

    A new cron or time zone, or re-enabling, sets the next fire time from now; disabling clears
    it. Only the changed columns are written: the sweep may be moving ``next_run_at`` meanwhile.
    """
    unknown = sorted(set(changes) - EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput({name: ["This field cannot be changed."] for name in unknown})
    fields: dict[str, Any] = {}
    if {"type", "target_id", "inputs", "config"} & set(changes):
        inputs, config = execution_request_validate(
            type=changes.get("type", schedule.type),
            target_id=changes.get("target_id", schedule.target_id),
            inputs=changes.get("inputs", schedule.inputs),
            config=changes.get("config", schedule.config),
        )
        fields.update(
            type=changes.get("type", schedule.type),
            target_id=changes.get("target_id", schedule.target_id), inputs=inputs, config=config,
        )
    if "cron" in changes or "timezone" in changes:
        fields["cron"], fields["timezone"] = _checked_timing(
            changes.get("cron", schedule.cron), changes.get("timezone", schedule.timezone)
        )
    if "overlap" in changes:
        fields["overlap"] = _checked_overlap(changes["overlap"])
    if "webhook" in changes:
        fields["webhook"] = _checked_webhook(changes["webhook"])
    enabled = changes.get("enabled", schedule.enabled)
    if not isinstance(enabled, bool):
        raise InvalidInput({"enabled": ["Must be true or false."]})
    retimed = "cron" in fields or enabled != schedule.enabled
    if retimed:
        fields["enabled"] = enabled
        fields["next_run_at"] = (
            next_fire_after(
                fields.get("cron", schedule.cron), fields.get("timezone", schedule.timezone),
                timezone.now(),
            )
            if enabled else None
        )
    if fields:
        fields["updated_at"] = timezone.now()
        Schedule.objects.filter(pk=schedule.pk).update(**fields)
    schedule.refresh_from_db()
    return schedule


def schedule_set_enabled(*, schedule: Schedule, enabled: bool) -> bool:
    """Pause (``enabled=False``) or resume a schedule; False when it already was. A resumed
    schedule next fires at its cron's next time after now: the windows it was paused over are
    not caught up."""
    next_run_at = next_fire_after(schedule.cron, schedule.timezone, timezone.now()) if enabled else None
    changed = Schedule.objects.filter(pk=schedule.pk, enabled=not enabled).update(
        enabled=enabled, next_run_at=next_run_at, updated_at=timezone.now()
    )
    schedule.refresh_from_db()
    return bool(changed)


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete a schedule and its firing records. The executions it started stay, their
    ``schedule_id`` emptied (``on_delete=SET_NULL``)."""
    schedule.delete()


def schedule_trigger(*, schedule: Schedule) -> Execution:
    """Start one execution of the schedule now, whatever its cron, ``enabled`` and ``overlap``
    say (an explicit request). Raises like ``execution_create`` (400 when the target or its
    inputs are no longer valid, 429 at the active cap)."""
    with transaction.atomic():
        now = timezone.now()
        execution = execution_create(
            owner=schedule.owner, type=schedule.type, target_id=schedule.target_id,
            inputs=schedule.inputs, config=schedule.config, webhook=schedule.webhook,
            schedule_id=schedule.pk,
        )
        ScheduleFiring.objects.create(
            schedule=schedule, trigger=FiringTrigger.MANUAL, scheduled_for=now, fired_at=now,
            outcome=FiringOutcome.STARTED, execution=execution,
        )
        Schedule.objects.filter(pk=schedule.pk).update(last_run_at=now)
    schedule.last_run_at = now
    return execution
