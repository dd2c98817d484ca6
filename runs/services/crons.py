"""Writes of crons (the Agent Server's scheduled runs): create, update, delete, and their firing.

A cron keeps the body of the runs it makes (``payload``) and the next time it fires
(``next_run_date``). Every worker's sweeper calls ``crons_fire_due`` (``runs.apps``); a firing is
``run_create`` with that body, on the cron's thread (its multitask strategy applies there as for
any run create) or, for a stateless cron, on a new thread, deleted when the run ends unless
``on_run_completed`` is ``"keep"``. Exactly once per firing time, whatever the number of workers:
the firing moves ``next_run_date`` on with a conditional UPDATE naming the value it read, in the
transaction that records the ``CronFiring`` (unique on cron and time) and creates the run.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import APIException

from runs.completion import run_webhook_check
from runs.errors import BadRequest, Unprocessable
from runs.models import Cron, CronFiring
from runs.selectors import thread_get
from runs.services.assistants import assistant_for_run
from runs.services.inputs import check_json_size
from runs.services.runs import run_create

logger = logging.getLogger(__name__)

# The body keys a cron passes on to each run it creates; the others describe the cron itself.
RUN_FIELDS = (
    "input", "config", "context", "webhook", "interrupt_before", "interrupt_after",
    "multitask_strategy", "stream_mode", "stream_subgraphs", "stream_resumable", "durability",
    "checkpoint_during",
)
ON_RUN_COMPLETED = ("delete", "keep")
# Crons fired per sweep at most; the rest wait for the next sweep (seconds later).
FIRE_BATCH = 100


def _cron_schedule(value: Any) -> str:
    """A five-field cron expression (minute hour day month weekday), or a 422."""
    schedule = " ".join(str(value).split())
    if len(schedule.split(" ")) != 5 or not croniter.is_valid(schedule):
        raise Unprocessable(
            f"Invalid schedule: {value!r}. Expected a cron expression of five fields "
            "(minute hour day-of-month month day-of-week), e.g. '*/5 * * * *'."
        )
    try:
        croniter(schedule, timezone.now()).get_next(datetime)
    except CroniterBadDateError:
        raise Unprocessable(f"Invalid schedule: {value!r} names no date that exists (e.g. 30 February).") from None
    return schedule


def _cron_timezone(value: Any) -> str:
    """An IANA time zone name (empty for UTC), or a 422."""
    if value in (None, ""):
        return ""
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise Unprocessable(f"Invalid timezone: {value!r}. Expected an IANA name such as 'Europe/Paris'.") from None
    return str(value)


def _cron_end_time(value: Any) -> datetime | None:
    """An ISO 8601 date-time (UTC when it names no offset), or a 422."""
    if value is None:
        return None
    try:
        parsed = parse_datetime(str(value))
    except ValueError:
        parsed = None
    if parsed is None:
        raise Unprocessable(f"Invalid end_time: {value!r}. Expected an ISO 8601 date-time.")
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


def cron_next_run(*, schedule: str, tz_name: str, after: datetime, end_time: datetime | None) -> datetime | None:
    """The first time ``schedule`` names after ``after`` (in UTC, read in ``tz_name``), or None
    once that is past ``end_time``."""
    zone = ZoneInfo(tz_name) if tz_name else UTC
    following = croniter(schedule, after.astimezone(zone)).get_next(datetime)
    following = following.astimezone(UTC)
    if end_time is not None and following > end_time:
        return None
    return following


def _run_body(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in RUN_FIELDS if body.get(key) is not None}


def _check_run_body(payload: dict[str, Any], metadata: Any) -> None:
    """What ``run_create`` would refuse, refused now rather than at every firing."""
    check_json_size("metadata", metadata)
    check_json_size("config", payload.get("config"))
    if payload.get("webhook") is not None:
        run_webhook_check(payload["webhook"])
    if (payload.get("config") or {}).get("configurable") and payload.get("context"):
        raise BadRequest("Cannot specify both configurable and context. Prefer setting context alone.")


def cron_create(*, owner, body: dict[str, Any], thread_id: Any = None) -> Cron:
    """A cron from a validated CronCreate (stateless, ``thread_id=None``) or ThreadCronCreate
    body: the assistant (UUID or graph id) and the thread must be the owner's (404)."""
    schedule = _cron_schedule(body["schedule"])
    tz_name = _cron_timezone(body.get("timezone"))
    end_time = _cron_end_time(body.get("end_time"))
    assistant = assistant_for_run(user=owner, assistant_id=body["assistant_id"])
    thread = None if thread_id is None else thread_get(user=owner, thread_id=thread_id)
    payload = _run_body(body)
    metadata = body.get("metadata") or {}
    _check_run_body(payload, metadata)
    if thread is not None:
        # A thread cron's runs go on its thread: on_run_completed is a stateless cron's.
        if body.get("on_run_completed") is not None:
            raise Unprocessable("on_run_completed applies to stateless crons only; this cron runs on a thread.")
        on_run_completed = ""
    else:
        on_run_completed = body.get("on_run_completed") or "delete"
    enabled = bool(body.get("enabled", True))
    now = timezone.now()
    return Cron.objects.create(
        owner=owner,
        assistant=assistant,
        thread=thread,
        schedule=schedule,
        timezone=tz_name,
        end_time=end_time,
        payload=payload,
        metadata=metadata,
        on_run_completed=on_run_completed,
        enabled=enabled,
        next_run_date=cron_next_run(schedule=schedule, tz_name=tz_name, after=now, end_time=end_time),
        created_at=now,
        updated_at=now,
    )


def cron_update(*, cron: Cron, body: dict[str, Any]) -> Cron:
    """Apply a validated CronPatch body: the given fields change, ``metadata`` is merged,
    ``end_time: null`` clears it. A new schedule, time zone, end time or enabling counts the
    next firing from now."""
    payload = {**cron.payload}
    for key in RUN_FIELDS:
        if key in body and body[key] is not None:
            payload[key] = body[key]
    metadata = {**cron.metadata, **(body.get("metadata") or {})}
    _check_run_body(payload, metadata)
    changes: dict[str, Any] = {"payload": payload, "metadata": metadata}
    if body.get("schedule") is not None:
        changes["schedule"] = _cron_schedule(body["schedule"])
    if "timezone" in body:
        changes["timezone"] = _cron_timezone(body["timezone"])
    if "end_time" in body:
        changes["end_time"] = _cron_end_time(body["end_time"])
    if body.get("on_run_completed") is not None:
        if cron.thread_id is not None:
            raise Unprocessable("on_run_completed applies to stateless crons only; this cron runs on a thread.")
        changes["on_run_completed"] = body["on_run_completed"]
    if body.get("enabled") is not None:
        changes["enabled"] = bool(body["enabled"])
    now = timezone.now()
    for name, value in changes.items():
        setattr(cron, name, value)
    fields = [*changes, "updated_at"]
    if {"schedule", "timezone", "end_time", "enabled"} & changes.keys():
        cron.next_run_date = cron_next_run(
            schedule=cron.schedule, tz_name=cron.timezone, after=now, end_time=cron.end_time
        )
        fields.append("next_run_date")
    cron.updated_at = now
    # Only what changed: a firing may have moved next_run_date on since this cron was read.
    cron.save(update_fields=fields)
    return cron


def cron_delete(*, cron: Cron) -> None:
    """Delete a cron: it fires no more. The runs and threads it made stay."""
    Cron.objects.filter(pk=cron.pk).delete()


def cron_set_enabled(*, crons: list[Cron], enabled: bool) -> int:
    """Enable or disable crons (the admin's actions); an enabled one counts its next firing from
    now, so a cron disabled for a while does not fire at once for the time it missed."""
    changed = 0
    now = timezone.now()
    for cron in crons:
        if cron.enabled == enabled:
            continue
        next_run = cron_next_run(schedule=cron.schedule, tz_name=cron.timezone, after=now, end_time=cron.end_time)
        changed += Cron.objects.filter(pk=cron.pk, enabled=not enabled).update(
            enabled=enabled, next_run_date=next_run, updated_at=now
        )
    return changed


# --- firing --------------------------------------------------------------------------------------


def _fire_body(cron: Cron) -> dict[str, Any]:
    return {**cron.payload, "assistant_id": str(cron.assistant_id), "metadata": cron.metadata}


def cron_fire(*, cron: Cron, now: datetime) -> CronFiring | None:
    """Fire ``cron`` for the time in its ``next_run_date`` (which has come) and move that on to
    the first time after ``now``: one firing however many were missed. None when another worker
    fired it first (or it was changed since it was read)."""
    scheduled = cron.next_run_date
    if scheduled is None:
        return None
    following = cron_next_run(
        schedule=cron.schedule, tz_name=cron.timezone, after=max(now, scheduled), end_time=cron.end_time
    )
    past_end = cron.end_time is not None and scheduled > cron.end_time
    with transaction.atomic():
        unfired = Cron.objects.filter(pk=cron.pk, enabled=True, next_run_date=scheduled)
        # A cron another sweeper is firing is skipped rather than waited for (PostgreSQL; SQLite
        # has one writer at a time anyway): that sweeper moves it on, this one goes to the next.
        if unfired.select_for_update(skip_locked=True).values_list("pk", flat=True).first() is None:
            return None
        moved = unfired.update(next_run_date=following)
        if not moved or past_end:
            return None
        try:
            with transaction.atomic():
                firing = CronFiring.objects.create(cron=cron, scheduled_for=scheduled, fired_at=now)
        except IntegrityError:
            # This time already fired (next_run_date was set back to it since): moving on is all
            # there is to do.
            return None
        try:
            with transaction.atomic():
                run = run_create(
                    owner=cron.owner,
                    body=_fire_body(cron),
                    thread_id=cron.thread_id,
                    on_completion=cron.on_run_completed if cron.thread_id is None else "",
                    thread_metadata=cron.metadata if cron.thread_id is None else None,
                )
        except APIException as exc:
            # The thread's reject strategy, the active-runs cap, a webhook no longer allowed:
            # this firing makes no run; the next one tries again.
            firing.error = f"{type(exc).__name__}: {exc.detail}"
            logger.info("cron %s fired for %s without a run: %s", cron.pk, scheduled, firing.error)
        else:
            firing.run_id, firing.thread_id = run.pk, run.thread_id
        firing.save(update_fields=["run_id", "thread_id", "error"])
        return firing


def crons_fire_due(*, now: datetime | None = None) -> int:
    """Fire every enabled cron whose time has come (the sweeper's job, on every worker; cheap
    when none is due: one indexed query). Returns the runs created."""
    now = now or timezone.now()
    fired = 0
    due = list(Cron.objects.due(now=now).select_related("owner").order_by("next_run_date")[:FIRE_BATCH])
    for cron in due:
        try:
            firing = cron_fire(cron=cron, now=now)
        except Exception:
            # One cron's failure (its assistant's graph gone, the database hiccuping) must not
            # stop the others; it is tried again at the next sweep.
            logger.exception("cron %s could not fire", cron.pk)
            continue
        if firing is not None and firing.run_id is not None:
            fired += 1
    return fired

