import django_filters
from django.db.models import F
from django_filters.constants import EMPTY_VALUES
from django_filters.fields import MultipleChoiceField

from executions.models import PRIORITY_MAX, PRIORITY_MIN, Execution, ExecutionStatus, ExecutionType


class AnyValueMultipleChoiceField(MultipleChoiceField):
    """Repeatable free-text values (``?target_id=a&target_id=b``): targets come and go, rows stay."""

    def valid_value(self, value: str) -> bool:
        return True


class RepeatableValueFilter(django_filters.MultipleChoiceFilter):
    field_class = AnyValueMultipleChoiceField


class NullsLastOrderingFilter(django_filters.OrderingFilter):
    """Rows without a timestamp (not started, not finished) sort last in both directions, on every
    database; PostgreSQL and SQLite disagree by default."""

    def filter(self, qs, value):
        value = [param for param in (value or []) if param.strip("-")]  # `?ordering=,` is no order
        if value in EMPTY_VALUES:
            return qs
        ordering = []
        for param in value:
            descending = param.startswith("-")
            expression = F(self.get_ordering_value(param.lstrip("-")).lstrip("-"))
            ordering.append(
                expression.desc(nulls_last=True) if descending else expression.asc(nulls_last=True)
            )
        return qs.order_by(*ordering)


class ExecutionFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=ExecutionStatus.choices)
    type = django_filters.MultipleChoiceFilter(choices=ExecutionType.choices)
    target_id = RepeatableValueFilter()
    priority = django_filters.MultipleChoiceFilter(
        choices=[(str(value), str(value)) for value in range(PRIORITY_MIN, PRIORITY_MAX + 1)],
        help_text="Exact priorities (may repeat).",
    )
    priority_min = django_filters.NumberFilter(
        field_name="priority", lookup_expr="gte", help_text="Priority at least this."
    )
    priority_max = django_filters.NumberFilter(
        field_name="priority", lookup_expr="lte", help_text="Priority at most this."
    )
    ordering = NullsLastOrderingFilter(
        fields=("created_at", "started_at", "completed_at", "priority"),
        help_text="created_at, started_at, completed_at or priority; prefix '-' for descending.",
    )

    class Meta:
        model = Execution
        fields = ["status", "type", "target_id", "priority"]
