"""executions.statements against its ORM equivalent (``transitions._apply_with_orm``), on the
database the tests run on (SQLite by default, PostgreSQL with DATABASE_URL): each kind of write
is applied to one of two identical executions by each path, and the rows and events they leave
must be the same."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.db.models import F, Q
from django.utils import timezone

from executions import statements, transitions
from executions.models import Execution, ExecutionEventType, ExecutionStatus

pytestmark = pytest.mark.django_db(transaction=True)

# Columns that differ between two rows made apart by design: the id, the creation time.
UNCOMPARED = {"id", "created_at"}
TIME_COLUMNS = {"started_at", "completed_at", "cancelled_at", "heartbeat_at", "requeued_at", "not_before"}


def twin_executions(**fields: Any) -> tuple[Execution, Execution]:
    def make() -> Execution:
        return Execution.objects.create(type="agent", target_id="echo", inputs={"a": 1}, **fields)

    return make(), make()


def row_of(execution_id: Any) -> dict[str, Any]:
    row = Execution.objects.filter(pk=execution_id).values().get()
    return {
        key: (value is not None) if key in TIME_COLUMNS else value
        for key, value in row.items()
        if key not in UNCOMPARED
    }


def events_of(execution: Execution) -> list[tuple[int, str, dict]]:
    return [(event.seq, event.type, event.data) for event in execution.events.order_by("seq")]


def by_sql(**kwargs: Any) -> tuple[int, Execution | None] | None:
    assert statements.supports_update_returning(connection), "this database takes the ORM path"
    return transitions._apply(**kwargs)


def by_orm(**kwargs: Any) -> tuple[int, Execution | None] | None:
    kwargs["allowed"] = transitions._allowed_statuses(kwargs["allowed"], kwargs["fields"])
    return transitions._apply_with_orm(**kwargs, alias="default")


WRITES: dict[str, tuple[dict[str, Any], Callable[[], dict[str, Any]]]] = {
    "claim (pending -> running, the row returned)": (
        {},
        lambda: {
            "allowed": [ExecutionStatus.PENDING], "event_type": ExecutionEventType.STATUS,
            "event_data": {"status": "running"}, "where": None, "fetch_row": True,
            "fields": {"status": ExecutionStatus.RUNNING, "started_at": timezone.now(),
                    "worker": "host:1", "attempts": F("attempts") + 1,
                    "heartbeat_at": timezone.now()},
        },
    ),
    "progress of a claim (fenced by worker and attempt)": (
        {"status": ExecutionStatus.RUNNING, "worker": "host:1", "attempts": 1},
        lambda: {
            "allowed": None, "event_type": ExecutionEventType.PROGRESS,
            "event_data": {"current_step": 2, "total_steps": 4, "step_name": "two", "percentage": 25.0},
            "where": Q(worker="host:1", attempts=1), "fetch_row": False,
            "fields": {"current_step": 2, "total_steps": 4, "step_name": "two", "percentage": 25.0},
        },
    ),
    "finish (running -> completed with outputs)": (
        {"status": ExecutionStatus.RUNNING, "worker": "host:1", "attempts": 1},
        lambda: {
            "allowed": [ExecutionStatus.RUNNING], "event_type": ExecutionEventType.STATUS,
            "event_data": {"status": "completed"}, "where": Q(worker="host:1", attempts=1),
            "fetch_row": False,
            "fields": {"status": ExecutionStatus.COMPLETED, "completed_at": timezone.now(),
                    "outputs": {"answer": [1, "two", None]}, "percentage": 100.0},
        },
    ),
    "an event alone": (
        {},
        lambda: {
            "allowed": None, "event_type": ExecutionEventType.LOG,
            "event_data": {"message": "hello", "n": 3}, "where": None, "fetch_row": False, "fields": {},
        },
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_leaves_the_row_and_event_its_orm_equivalent_leaves(write: str) -> None:
    initial, arguments = WRITES[write]
    by_statement, by_model = twin_executions(**initial)

    sql_result = by_sql(execution_id=by_statement.pk, **arguments())
    orm_result = by_orm(execution_id=by_model.pk, **arguments())

    assert sql_result is not None and orm_result is not None
    assert sql_result[0] == orm_result[0] == 1  # the event's sequence number
    assert row_of(by_statement.pk) == row_of(by_model.pk)
    assert events_of(by_statement)[0][1:] == events_of(by_model)[0][1:]
    if arguments()["fetch_row"]:
        returned, read = sql_result[1], Execution.objects.get(pk=by_statement.pk)
        assert returned is not None
        for field in statements.EXECUTION_FIELDS:
            assert getattr(returned, field.attname) == getattr(read, field.attname), field.name


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_that_matches_no_row_changes_nothing_on_either_path(write: str) -> None:
    initial, arguments = WRITES[write]
    # A row no write above may touch: finished, owned by another claim.
    by_statement, by_model = twin_executions(
        status=ExecutionStatus.CANCELLED, worker="host:2", attempts=7
    )
    before = row_of(by_statement.pk)
    kwargs = arguments()
    unconditional = kwargs["allowed"] is None and kwargs["where"] is None
    # An unconditional event append applies to any row there is: aim it at one that is not.
    target_sql = uuid.uuid4() if unconditional else by_statement.pk
    target_orm = uuid.uuid4() if unconditional else by_model.pk

    assert by_sql(execution_id=target_sql, **kwargs) is None
    assert by_orm(execution_id=target_orm, **arguments()) is None
    assert row_of(by_statement.pk) == before == row_of(by_model.pk)
    assert events_of(by_statement) == [] == events_of(by_model)
