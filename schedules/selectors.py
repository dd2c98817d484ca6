"""Reads shared by the API, the admin and the management commands."""

from schedules.models import Schedule, ScheduleQuerySet


def schedules_visible_to(user) -> ScheduleQuerySet:
    """A user's own schedules: the API never shows anybody else's, staff included."""
    return Schedule.objects.owned_by(user)
