import django_filters
from django import forms
from django.core.exceptions import ValidationError

from executions.filters import NullsLastOrderingFilter, RepeatableValueFilter
from executions.models import ExecutionType
from project.booleans import FALSE_WORDS, TRUE_WORDS
from schedules.models import Schedule, ScheduleOverlap


class StrictBooleanField(forms.CharField):
    def to_python(self, value: object) -> bool | None:  # type: ignore[override]  # a bool, not text
        text = (super().to_python(value) or "").strip().lower()
        if not text:
            return None
        if text not in TRUE_WORDS | FALSE_WORDS:
            raise ValidationError(f"{value!r} is not a boolean: use true or false.")
        return text in TRUE_WORDS


class StrictBooleanFilter(django_filters.Filter):
    """``?enabled=true|false`` (1/0, yes/no, on/off); any other word is a 400, not ignored."""

    field_class = StrictBooleanField


class ScheduleFilter(django_filters.FilterSet):
    enabled = StrictBooleanFilter(help_text="true: only enabled schedules; false: only paused ones.")
    # distinct=False: these filters join nothing (as the executions list's).
    type = django_filters.MultipleChoiceFilter(choices=ExecutionType.choices, distinct=False)
    target_id = RepeatableValueFilter(distinct=False)
    overlap = django_filters.MultipleChoiceFilter(choices=ScheduleOverlap.choices, distinct=False)
    ordering = NullsLastOrderingFilter(
        fields=("created_at", "next_run_at", "last_run_at"),
        nullable=frozenset({"next_run_at", "last_run_at"}),  # paused; never fired
        help_text="created_at, next_run_at or last_run_at; prefix '-' for descending.",
    )

    class Meta:
        model = Schedule
        fields = ["enabled", "type", "target_id", "overlap"]
