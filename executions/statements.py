"""The executions app's hand-written SQL, in one place (as ``runs.statements`` and
``checkpoints.sql`` hold theirs).

Only one statement is written out here: a status change or event of ``executions.transitions``,
an UPDATE that bumps the row's ``event_seq`` and the INSERT of the event numbered from it. The
UPDATE itself is compiled by the ORM (so its SET and WHERE may hold any expression); what is
written by hand is what the ORM cannot say: ``RETURNING`` the bumped counter (and, for a claim,
the whole row) instead of a SELECT after it, and on PostgreSQL both statements in one
data-modifying CTE, one round trip. ``transitions._apply_with_orm`` is the plain ORM equivalent,
which ``tests/executions/test_statements.py`` compares this with on SQLite and PostgreSQL.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, FloatField, Model, Q
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from executions.models import Execution, ExecutionEvent

EXECUTION_FIELDS = Execution._meta.concrete_fields
# Concrete fields always have a column; the stubs type it optional for the others.
EXECUTION_COLUMNS = [cast(str, field.column) for field in EXECUTION_FIELDS]


def supports_update_returning(connection: BaseDatabaseWrapper) -> bool:
    if connection.vendor == "postgresql":
        return True
    # UPDATE … RETURNING came to SQLite in 3.35, with INSERT … RETURNING (which Django detects).
    return connection.vendor == "sqlite" and connection.features.can_return_columns_from_insert


def update_sql(
    connection: BaseDatabaseWrapper, *, execution_id: UUID | str, allowed: Iterable[str] | None,
    where: Q | None, fields: dict[str, Any],
) -> tuple[str, list[Any]]:
    """The conditional UPDATE that bumps ``event_seq``, compiled by the ORM, so ``fields`` and
    ``where`` may hold any expression."""
    queryset = Execution.objects.filter(where or Q(), pk=execution_id)
    if allowed is not None:
        queryset = queryset.filter(status__in=list(allowed))
    query = cast(UpdateQuery, queryset.query.chain(UpdateQuery))
    query.add_update_values({"event_seq": F("event_seq") + 1, **fields})
    compiler = query.get_compiler(connection=connection)
    compiler.pre_sql_setup()
    sql, params = compiler.as_sql()
    return sql, list(params)


def event_values(
    connection: BaseDatabaseWrapper, event_type: str, data: dict[str, Any]
) -> list[Any]:
    """The event row's type, data and time, made ready for the database as the ORM would."""
    meta = ExecutionEvent._meta
    return [
        event_type,
        meta.get_field("data").get_db_prep_save(data, connection),
        meta.get_field("at").get_db_prep_save(timezone.now(), connection),
    ]


def update_and_append_event(
    connection: BaseDatabaseWrapper, *, alias: str, update_sql: str, update_params: list[Any],
    event_params: list[Any], fetch_row: bool,
) -> Sequence[Any] | None:
    """Run the UPDATE and, if it matched, insert its event numbered from the bumped counter.

    Returns the UPDATE's row: the execution's columns in field order if ``fetch_row``, then
    always its id and its new ``event_seq``; None if no row matched (and no event was written).
    """
    qn = connection.ops.quote_name
    returning = ", ".join(
        [
            *(qn(column) for column in EXECUTION_COLUMNS if fetch_row),
            f"{qn('id')} AS job_id", f"{qn('event_seq')} AS job_seq",
        ]
    )
    insert_event = (
        f"INSERT INTO {qn(ExecutionEvent._meta.db_table)} (execution_id, seq, type, data, at)"
    )
    row: Sequence[Any] | None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH u AS ({update_sql} RETURNING {returning}), "
                f"e AS ({insert_event} SELECT job_id, job_seq, %s, %s, %s FROM u) "
                f"SELECT * FROM u",
                [*update_params, *event_params],
            )
            row = cursor.fetchone()
    else:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            cursor.execute(f"{update_sql} RETURNING {returning}", update_params)
            row = cursor.fetchone()
            if row is not None:
                cursor.execute(
                    f"{insert_event} VALUES (%s, %s, %s, %s, %s)", [*row[-2:], *event_params]
                )
    return row


def _as_float(value: Any, expression: Any, connection: Any) -> Any:
    return float(value) if isinstance(value, int) else value


_readers: weakref.WeakKeyDictionary[Any, Callable[[Sequence[Any]], Execution]] = (
    weakref.WeakKeyDictionary()
)


def row_reader(connection: BaseDatabaseWrapper) -> Callable[[Sequence[Any]], Execution]:
    """Turns a returned row (all of Execution's columns, in field order) into an Execution,
    converting values the way the ORM does (JSON text, SQLite's datetime strings, UUIDs)."""
    reader = _readers.get(connection)
    if reader is not None:
        return reader
    table = Execution._meta.db_table
    converters = []
    for field in EXECUTION_FIELDS:
        column = field.get_col(table)
        column_converters = [
            *connection.ops.get_db_converters(column), *column.get_db_converters(connection)
        ]
        if isinstance(field, FloatField):
            # SQLite stores whole REAL values as integers and, unlike a SELECT, RETURNING hands
            # them back as such: 0 where the ORM reads 0.0.
            column_converters.append(_as_float)
        converters.append((column, column_converters))
    attnames = [field.attname for field in EXECUTION_FIELDS]

    def read(row: Sequence[Any]) -> Execution:
        values = []
        for value, (column, column_converters) in zip(row, converters, strict=True):
            for converter in column_converters:
                value = converter(value, column, connection)
            values.append(value)
        return Execution.from_db(connection.alias, attnames, values)

    _readers[connection] = read
    return read


def _eligible(connection: BaseDatabaseWrapper, alias: str, *, targets: int, owners: int) -> str:
    """The condition that the execution ``alias`` may be claimed now: pending, not blocked by a
    dependency, due, of the timeout class of the message's execution (django-q2 armed the
    message's timeout, so a worker may only take a row that times out the same way), and not of a
    target or owner at its limit
    (``targets`` and ``owners`` placeholders)."""
    qn = connection.ops.quote_name
    table = qn(Execution._meta.db_table)

    def col(name: str, of: str = alias) -> str:
        return f"{of}.{qn(name)}"

    if connection.vendor == "postgresql":
        timeout_of = f"({{}}.{qn('config')} -> 'timeout')"
        same = "IS NOT DISTINCT FROM"
    else:
        timeout_of = f"json_extract({{}}.{qn('config')}, '$.timeout')"
        same = "IS"
    conditions = [
        f"{col('status')} = %s",
        f"NOT {col('blocked')}",
        f"({col('not_before')} IS NULL OR {col('not_before')} <= %s)",
        (
            f"{timeout_of.format(alias)} {same} "
            f"(SELECT {timeout_of.format('m')} FROM {table} m WHERE m.{qn('id')} = %s)"
        ),
    ]
    if targets:
        conditions.append(f"{col('target_id')} NOT IN ({', '.join(['%s'] * targets)})")
    if owners:
        conditions.append(
            f"({col('owner_id')} IS NULL OR {col('owner_id')} NOT IN ({', '.join(['%s'] * owners)}))"
        )
    return " AND ".join(conditions)


def claim_sql(
    connection: BaseDatabaseWrapper, *, hint: UUID | None, worker: str, now: Any,
    saturated_targets: Sequence[str] = (), saturated_owners: Sequence[int] = (),
) -> tuple[str, list[Any]]:
    """The claim: one UPDATE pending -> running of the first claimable execution in claiming
    order (priority, highest first, then the oldest), whichever execution the message (``hint``)
    named: that one is only what sets the timeout class (``_eligible``).

    On PostgreSQL the candidate is read ``FOR UPDATE SKIP LOCKED``, so concurrent claims pass
    each other by instead of queueing on one head row; on SQLite the single writer makes the
    UPDATE atomic as is. The subquery walks the ``execution_claim_order`` index, so its cost does
    not grow with the queue. Returns (sql, params) for ``update_and_append_event``.
    """
    qn = connection.ops.quote_name
    table = qn(Execution._meta.db_table)
    meta = Execution._meta
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    hint_param = meta.pk.get_db_prep_value(hint, connection) if hint is not None else None
    when = meta.get_field("started_at").get_db_prep_value(now, connection)
    eligible = _eligible(
        connection, "b", targets=len(saturated_targets), owners=len(saturated_owners)
    )
    order = f"b.{qn('priority')} DESC, b.{qn('created_at')}, b.{qn('id')}"
    sql = (
        f"UPDATE {table} SET {qn('status')} = %s, {qn('started_at')} = %s, "
        f"{qn('heartbeat_at')} = %s, {qn('worker')} = %s, "
        f"{qn('attempts')} = {qn('attempts')} + 1, {qn('event_seq')} = {qn('event_seq')} + 1 "
        f"WHERE {qn('status')} = %s AND {qn('id')} = "
        f"(SELECT b.{qn('id')} FROM {table} b WHERE {eligible} ORDER BY {order} LIMIT 1{lock})"
    )
    params = [
        "running", when, when, worker, "pending",
        "pending", when, hint_param, *saturated_targets, *saturated_owners,
    ]
    return sql, params


def indexed_distinct_values(model: type[Model], column: str, *, using: str = DEFAULT_DB_ALIAS) -> list[Any]:
    """The distinct non-NULL values of ``column``, which must lead an index, in order.

    A recursive "loose index scan": one index probe per distinct value (MIN above the previous
    one) instead of ``SELECT DISTINCT``, which reads the whole table or index. The admin's filter
    sidebars ask this of a million rows with a handful of targets and owners.
    """
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    name = connection.ops.quote_name(column)
    sql = (
        f"WITH RECURSIVE v(x) AS (SELECT MIN({name}) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN({name}) FROM {table} WHERE {name} > v.x) FROM v "
        f"WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]
