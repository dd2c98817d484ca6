import django_filters
from django.db.models import F
from django_filters.constants import EMPTY_VALUES
from django_filters.fields import MultipleChoiceField

from executions.models import PRIORITY_MAX, PRIORITY_MIN, Execution, ExecutionStatus, ExecutionType

# Timestamps a row may lack (not started, not finished): they sort last in both directions.
NULLABLE_ORDERINGS = frozenset({"started_at", "completed_at"})


class AnyValueMultipleChoiceField(MultipleChoiceField):
    """Repeatable free-text values (``?target_id=a&target_id=b``): targets come and go, rows stay."""

    def valid_value(self, value: str) -> bool:
        return True


class RepeatableValueFilter(django_filters.MultipleChoiceFilter):
    field_class = AnyValueMultipleChoiceField


class NullsLastOrderingFilter(django_filters.OrderingFilter):
    """Rows without a timestamp (not started, not finished) sort last in both directions, on every
    database (PostgreSQL and SQLite disagree by default). Only the nullable columns say NULLS LAST:
    on a NOT NULL column it would stop PostgreSQL from reading the order off an index. The id
    breaks ties, so pages never repeat or skip rows that share a value. ``nullable``: the columns
    that may be NULL (another model's list names its own)."""

    def __init__(self, *args, nullable: frozenset[str] = NULLABLE_ORDERINGS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nullable = nullable

    def filter(self, qs, value):
        value = [param for param in (value or []) if param.strip("-")]  # `?ordering=,` is no order
        if value in EMPTY_VALUES:
            return qs
        ordering = []
        descending = False
        names = []
        for param in value:
            descending = param.startswith("-")
            name = self.get_ordering_value(param.lstrip("-")).lstrip("-")
            names.append(name)
            expression = F(name)
            nulls_last = True if name in self.nullable else None
            ordering.append(
                expression.desc(nulls_last=nulls_last) if descending else expression.asc(nulls_last=nulls_last)
            )
        # Many rows share a priority: within one, by age (as the claim takes them), then by id;
        # the (owner, priority, created_at, id) index reads that order.
        tiebreak = ["created_at", "id"] if names == ["priority"] else ["id"]
        ordering += [F(name).desc() if descending else F(name).asc() for name in tiebreak]
        return qs.order_by(*ordering)


class ExecutionFilter(django_filters.FilterSet):
    # distinct=False: these filters join nothing, and django-filter's default SELECT DISTINCT over
    # every column (JSON included) made PostgreSQL sort the whole filtered set.
    status = django_filters.MultipleChoiceFilter(choices=ExecutionStatus.choices, distinct=False)
    type = django_filters.MultipleChoiceFilter(choices=ExecutionType.choices, distinct=False)
    target_id = RepeatableValueFilter(distinct=False)
    priority = django_filters.MultipleChoiceFilter(
        choices=[(str(value), str(value)) for value in range(PRIORITY_MIN, PRIORITY_MAX + 1)],
        help_text="Exact priorities (may repeat).",
        distinct=False,
    )
    priority_min = django_filters.NumberFilter(
        field_name="priority", lookup_expr="gte", help_text="Priority at least this."
    )
    priority_max = django_filters.NumberFilter(
        field_name="priority", lookup_expr="lte", help_text="Priority at most this."
    )
    schedule_id = django_filters.UUIDFilter(
        field_name="schedule_id", help_text="Only the executions this schedule started."
    )
    ordering = NullsLastOrderingFilter(
        fields=("created_at", "started_at", "completed_at", "priority"),
        help_text="created_at, started_at, completed_at or priority; prefix '-' for descending.",
    )

    class Meta:
        model = Execution
        fields = ["status", "type", "target_id", "priority"]
