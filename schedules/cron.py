"""Cron expressions and time zones of schedules: checking them, and the fire times they give.

Fire times are computed in the schedule's own time zone (``0 9 * * *`` in Europe/Paris is 09:00
Paris time, summer and winter) and stored in UTC. croniter handles the daylight-saving jumps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

# croniter also takes a 6th (seconds) and 7th (year) field; the sweep that fires schedules runs
# every few seconds, so a seconds field would promise a precision nobody gets.
_FIELDS = 5
_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class CronInvalid(ValueError):
    """A cron expression or time zone a schedule cannot use; the message says why, for clients."""


def cron_check(expression: object) -> str:
    """``expression`` normalised (single spaces), or ``CronInvalid`` saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronInvalid("Cron must be a non-empty string such as '*/5 * * * *'.")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise CronInvalid(f"Unknown cron macro {text!r}; one of: {', '.join(_MACROS)}.")
        return text.lower()
    if len(text.split(" ")) != _FIELDS:
        raise CronInvalid(
            f"Cron {text!r} must have 5 fields: minute hour day-of-month month day-of-week "
            "(e.g. '*/5 * * * *')."
        )
    if not croniter.is_valid(text):
        raise CronInvalid(f"Cron {text!r} is not a valid cron expression.")
    try:
        croniter(text, datetime.now(UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise CronInvalid(f"Cron {text!r} never fires (no such date).") from None
    except CroniterError as exc:
        raise CronInvalid(f"Cron {text!r} is not a valid cron expression: {exc}.") from None
    return text


def timezone_check(name: object) -> str:
    """``name`` if it is an IANA time zone (``Europe/Paris``, ``UTC``), else ``CronInvalid``."""
    if not isinstance(name, str) or not name:
        raise CronInvalid("Timezone must be an IANA time zone name such as 'Europe/Paris'.")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronInvalid(
            f"Unknown timezone {name!r}; use an IANA name such as 'UTC' or 'Europe/Paris'."
        ) from None
    return name


def next_fire_after(cron: str, timezone: str, moment: datetime) -> datetime:
    """The first fire time strictly after ``moment``, in UTC."""
    local = moment.astimezone(ZoneInfo(timezone))
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def last_fire_at_or_before(cron: str, timezone: str, moment: datetime) -> datetime:
    """The latest fire time at or before ``moment``, in UTC (croniter's get_prev is strictly
    before, so a moment exactly on a fire time is checked on its own)."""
    local = moment.astimezone(ZoneInfo(timezone))
    previous = croniter(cron, local).get_prev(datetime)
    candidate = croniter(cron, previous).get_next(datetime)
    latest = candidate if candidate <= local else previous
    return latest.astimezone(UTC)

