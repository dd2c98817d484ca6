"""The runs app's hand-written SQL, in one place (as procrastinate keeps its queries), with one
set of helpers to write it: names quoted from the models (``table``, ``column``), values made
ready as the ORM would make them (``prep``), ``RETURNING`` where the database has it
(``can_return``).

Why written out: these are the statements every run pays for, the API's run create and the
worker's claim and end. The ORM spent more CPU composing them (filters, lookups, compilers,
``Model.save``) than the database spent running them: some 0.2-1.5 ms per statement. Each
statement's text is built once per database vendor; values go through the fields' own
``get_db_prep_save`` and ``from_db_value``, so they are stored and read exactly as the ORM would.
Every statement still goes through Django's cursor (query logging, error wrapping,
``errors_occurred``). On PostgreSQL and SQLite >= 3.35, an UPDATE says ``RETURNING`` what would
otherwise be read back in a second statement.

``tests/runs/test_statements.py`` runs each statement against its ORM equivalent, on SQLite and
on PostgreSQL. (The checkpoint saver's statements are the ``checkpoints`` app's, in
``checkpoints.sql``.)
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, cast

import orjson
from django.db import connection
from django.db.models import Field, JSONField, Model
from django.db.models.constants import OnConflict

from checkpoints.sql import Fence, FenceClosed
from runs.models import Assistant, Run, RunEvent, RunStatus, Thread, ThreadStatus

# Rows per INSERT: SQLite allows 32,766 parameters a statement, PostgreSQL 65,535.
EVENT_ROWS_PER_STATEMENT = 500

# The fields a claimed run is loaded with (RETURNING of the claim), in the model's field order;
# every other field is deferred (read from the database if something asks for it).
CLAIMED_FIELDS = ("run_id", "thread", "assistant", "owner", "kwargs", "attempts", "on_completion")

# (run_id, seq, event, data, thread_only, created_at) of a RunEvent.
EventRow = tuple[Any, int, str, str, bool, datetime]


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def _column_name(field: Field) -> str:
    if field.column is None:  # a field without a column of its own: no statement names it
        raise ValueError(f"{field} has no column")
    return field.column


def column(model: type[Model], field: str) -> str:
    return quote(_column_name(cast(Field, model._meta.get_field(field))))


@dataclass(frozen=True)
class Prepared:
    """A value already through ``prep``: made before a transaction, so that encoding a large JSON
    value (a thread's whole conversation) does not hold SQLite's one write lock."""

    param: Any


def prep(model: type[Model], field: str, value: Any) -> Any:
    """``value`` as the ORM would send it for ``model.field``; JSON encoded by orjson."""
    if isinstance(value, Prepared):
        return value.param
    model_field = cast(Field, model._meta.get_field(field))
    if isinstance(model_field, JSONField) and model_field.encoder is None and value is not None:
        return json_param(value) or model_field.get_db_prep_save(value, connection)
    return model_field.get_db_prep_save(value, connection)


def _encoded(text: str) -> str:
    return text


def json_param(value: Any) -> Any:
    """``value`` for a JSON column, encoded by orjson: a thread's values and a run's result are
    the whole conversation, which ``json.dumps`` took ten times longer to encode. None if orjson
    refuses it (integers beyond 64 bits, keys that are not strings): the ORM's way then."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return None
    if connection.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import Jsonb

        return Jsonb(text, dumps=_encoded)
    return text


def can_return() -> bool:
    """Whether an UPDATE can say RETURNING on this connection."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        # The library Django's SQLite backend uses; RETURNING came with 3.35.
        return sqlite3.sqlite_version_info >= (3, 35, 0)
    return False


def as_uuid(value: Any) -> uuid.UUID:
    """A UUID column's value (SQLite stores UUIDs as hex text)."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def from_db(model: type[Model], field: str, value: Any) -> Any:
    """A JSON column's value as the ORM would read it."""
    json_field = cast(JSONField, model._meta.get_field(field))
    return json_field.from_db_value(value, None, connection)  # type: ignore[arg-type]  # no expression


# --- a row of any model, all its columns ------------------------------------------------------


@cache
def insert_sql(model: type[Model], vendor: str, ignore_conflicts: bool) -> str:
    on_conflict = OnConflict.IGNORE if ignore_conflicts else None
    fields = model._meta.concrete_fields
    columns = ", ".join(quote(_column_name(field)) for field in fields)
    suffix = connection.ops.on_conflict_suffix_sql(fields, on_conflict, None, None)
    return (
        f"{connection.ops.insert_statement(on_conflict=on_conflict)} {table(model)} ({columns}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) {suffix}"
    ).rstrip()


def insert_params(obj: Model, db: Any) -> list[Any]:
    """``obj``'s column values for ``insert``, ready for the database. Worth computing before
    the transaction: encoding a run's JSON fields inside it held SQLite's one write lock longer."""
    return [field.get_db_prep_save(field.pre_save(obj, True), db) for field in type(obj)._meta.concrete_fields]


def insert(cursor: Any, obj: Model, *, ignore_conflicts: bool = False, params: list[Any] | None = None) -> None:
    """INSERT ``obj`` with all its columns, as ``save()`` would (the runs models have no signal
    receivers to miss); ``params`` from ``insert_params`` if already computed. ``cursor.db``
    rather than the ``connection`` proxy: each attribute read through that is a lookup of the
    thread's connection."""
    db = cursor.db
    cursor.execute(
        insert_sql(type(obj), db.vendor, ignore_conflicts),
        insert_params(obj, db) if params is None else params,
    )
    obj._state.adding = False
    obj._state.db = db.alias


# --- a run's create: its thread and probes ------------------------------------------------------


def run_probes_sql(count_active: bool) -> str:
    """The owner's pending and running runs (0 when uncapped), and whether the run's assistant is
    still there."""
    active = (
        f"(SELECT COUNT(*) FROM {table(Run)} WHERE {column(Run, 'owner')} = %s "
        f"AND {column(Run, 'status')} IN ({', '.join(['%s'] * len(RunStatus.active()))}))"
        if count_active else "0"
    )
    assistant = (
        f"EXISTS (SELECT 1 FROM {table(Assistant)} WHERE {column(Assistant, 'assistant_id')} = %s)"
    )
    return f"{active}, {assistant}"


def run_probes_params(owner: Any, assistant: Assistant, count_active: bool) -> list[Any]:
    active = [owner.pk, *RunStatus.active()] if count_active else []
    return [*active, prep(Assistant, "assistant_id", assistant.pk)]


@cache
def run_probes_only_sql(vendor: str, count_active: bool) -> str:
    return f"SELECT {run_probes_sql(count_active)}"


@cache
def thread_busy_sql(vendor: str, count_active: bool, returning: bool) -> str:
    """Marks an owner's thread busy; with ``returning``, also answers its metadata and the run's
    probes. The UPDATE locks the row, as ``select_for_update`` did, until the run is in."""
    update = (
        f"UPDATE {table(Thread)} SET {column(Thread, 'status')} = %s, "
        f"{column(Thread, 'updated_at')} = %s "
        f"WHERE {column(Thread, 'thread_id')} = %s AND {column(Thread, 'owner')} = %s"
    )
    if not returning:
        return update
    return f"{update} RETURNING {column(Thread, 'metadata')}, {run_probes_sql(count_active)}"


@cache
def thread_read_sql(vendor: str, count_active: bool) -> str:
    """``thread_busy_sql``'s answer without RETURNING (SQLite before 3.35), read first."""
    return (
        f"SELECT {column(Thread, 'metadata')}, {run_probes_sql(count_active)} FROM {table(Thread)} "
        f"WHERE {column(Thread, 'thread_id')} = %s AND {column(Thread, 'owner')} = %s"
    )


@cache
def thread_metadata_sql(vendor: str) -> str:
    return (
        f"UPDATE {table(Thread)} SET {column(Thread, 'metadata')} = %s "
        f"WHERE {column(Thread, 'thread_id')} = %s"
    )


# --- a /wait's read -----------------------------------------------------------------------------


@cache
def run_state_sql(vendor: str) -> str:
    """(status, result) of a run: what a /wait reads until the run ends, the result as the JSON
    text stored (``runs.services.waiting`` sends it as it is)."""
    status, result, pk = (column(Run, name) for name in ("status", "result", "run_id"))
    return f"SELECT {status}, {result} FROM {table(Run)} WHERE {pk} = %s"


# --- the claim ----------------------------------------------------------------------------------


@cache
def claim_sql(vendor: str, returning: bool) -> str:
    """The claim as one UPDATE: the run, if pending and due, unless an older due pending run of
    its thread exists (created earlier, or at the same instant with a smaller id). With
    ``returning``, it also answers the claimed run's fields and its assistant's graph id."""
    run = table(Run)

    def col(field: str, of: str = run) -> str:
        return f"{of}.{column(Run, field)}"

    older = quote("older")
    sql = (
        f"UPDATE {run} SET {column(Run, 'status')} = %s, {column(Run, 'started_at')} = %s, "
        f"{column(Run, 'heartbeat_at')} = %s, {column(Run, 'updated_at')} = %s, "
        f"{column(Run, 'worker')} = %s, {column(Run, 'attempts')} = {col('attempts')} + 1 "
        f"WHERE {col('run_id')} = %s AND {col('status')} = %s AND {col('created_at')} <= %s "
        f"AND NOT EXISTS (SELECT 1 FROM {run} AS {older} "
        f"WHERE {col('thread', older)} = {col('thread')} AND {col('status', older)} = %s "
        f"AND {col('created_at', older)} <= %s AND ({col('created_at', older)} < {col('created_at')} "
        f"OR ({col('created_at', older)} = {col('created_at')} AND {col('run_id', older)} < {col('run_id')})))"
    )
    if returning:
        fields = ", ".join(column(Run, name) for name in CLAIMED_FIELDS)
        assistant = table(Assistant)
        graph = (
            f"(SELECT {assistant}.{column(Assistant, 'graph_id')} FROM {assistant} "
            f"WHERE {assistant}.{column(Assistant, 'assistant_id')} = {col('assistant')})"
        )
        sql += f" RETURNING {fields}, {graph}"
    return sql


def claimed_run(row: Sequence[Any]) -> Run:
    """The Run of a claim's RETURNING row: the fields a worker uses, the rest deferred, and its
    assistant's graph id."""
    run_id, thread_id, assistant_id, owner_id, kwargs, attempts, on_completion, graph_id = row
    values = {
        "run_id": as_uuid(run_id),
        "thread_id": as_uuid(thread_id),
        "assistant_id": as_uuid(assistant_id),
        "owner_id": owner_id,
        "kwargs": from_db(Run, "kwargs", kwargs),
        "attempts": attempts,
        "on_completion": on_completion,
    }
    names = [f.attname for f in Run._meta.concrete_fields if f.attname in values]
    run = Run.from_db(connection.alias, names, [values[name] for name in names])
    run.status = RunStatus.RUNNING
    run.assistant = Assistant.from_db(
        connection.alias, ["assistant_id", "graph_id"], [values["assistant_id"], graph_id]
    )
    return run


# --- a run's end --------------------------------------------------------------------------------


@cache
def thread_lock_sql(vendor: str, for_update: bool) -> str:
    run = table(Run)
    following = (
        f"SELECT {{}} FROM {run} WHERE {column(Run, 'thread')} = %s "
        f"AND {column(Run, 'status')} IN (%s, %s) AND {column(Run, 'run_id')} <> %s "
        f"ORDER BY {column(Run, 'created_at')}, {column(Run, 'run_id')} LIMIT 1"
    )
    lock = " FOR UPDATE" if for_update else ""
    return (
        f"SELECT ({following.format(column(Run, 'run_id'))}), "
        f"({following.format(column(Run, 'created_at'))}) "
        f"FROM {table(Thread)} WHERE {column(Thread, 'thread_id')} = %s{lock}"
    )


def thread_lock(
    cursor: Any, thread_id: Any, run_id: Any
) -> tuple[bool, tuple[uuid.UUID, datetime] | None]:
    """Lock the thread's row (on SQLite the transaction's write lock does); whether it exists,
    and (id, created_at) of its oldest pending or running run other than ``run_id``, if any:
    the run to start after this one, which also says whether the thread stays busy. Under the
    lock no run can be created, and this one is no longer active once it ends."""
    thread = prep(Thread, "thread_id", thread_id)
    run = prep(Run, "run_id", run_id)
    cursor.execute(
        thread_lock_sql(connection.vendor, connection.features.has_select_for_update),
        [prep(Run, "thread", thread_id), *RunStatus.active(), run] * 2 + [thread],
    )
    rows = cursor.fetchall()
    if not rows:
        return False, None
    following_id, created_at = rows[0]
    if following_id is None:
        return True, None
    field = Run._meta.get_field("created_at")
    for converter in connection.ops.get_db_converters(field.cached_col):
        created_at = converter(created_at, field.cached_col, connection)
    return True, (as_uuid(following_id), created_at)


@cache
def run_end_sql(vendor: str, returning: bool) -> str:
    """running -> an end, under the worker's claim: (run_id, status it ends from, worker,
    attempts) in the WHERE."""
    sets = ", ".join(
        f"{column(Run, name)} = %s"
        for name in ("status", "result", "error", "ended_at", "updated_at", "heartbeat_at")
    )
    sql = (
        f"UPDATE {table(Run)} SET {sets} "
        f"WHERE {column(Run, 'run_id')} = %s AND {column(Run, 'status')} = %s "
        f"AND {column(Run, 'worker')} = %s AND {column(Run, 'attempts')} = %s"
    )
    if returning:
        sql += f" RETURNING {column(Run, 'on_completion')}"
    return sql


@cache
def run_on_completion_sql(vendor: str) -> str:
    return f"SELECT {column(Run, 'on_completion')} FROM {table(Run)} WHERE {column(Run, 'run_id')} = %s"


@cache
def thread_update_sql(vendor: str, fields: tuple[str, ...], status_at_rest: bool) -> str:
    """UPDATE of a thread's ``fields`` and status: the given one, or with ``status_at_rest`` the
    stored resting status."""
    status = column(Thread, "resting_status") if status_at_rest else "%s"
    sets = [f"{column(Thread, 'status')} = {status}"]
    sets += [f"{column(Thread, name)} = %s" for name in fields]
    return f"UPDATE {table(Thread)} SET {', '.join(sets)} WHERE {column(Thread, 'thread_id')} = %s"


def thread_update(cursor: Any, thread_id: Any, fields: dict[str, Any], *, busy: bool) -> None:
    """Set ``fields`` of the thread, and its status: busy, or else its resting status (the one in
    ``fields`` if there is one, else the stored one)."""
    at_rest = not busy and "resting_status" not in fields
    params: list[Any] = []
    if not at_rest:
        params.append(str(ThreadStatus.BUSY if busy else fields["resting_status"]))
    params += [prep(Thread, name, value) for name, value in fields.items()]
    params.append(prep(Thread, "thread_id", thread_id))
    cursor.execute(thread_update_sql(connection.vendor, tuple(fields), at_rest), params)


# --- the fence of a worker's writes -------------------------------------------------------------


@cache
def claim_held_sql(vendor: str) -> str:
    """The condition that a worker still holds its claim of a run: (run_id, running, worker,
    attempts). Fenced INSERTs (the run's events, its checkpoints) select their rows WHERE it."""
    run = table(Run)
    return (
        f"EXISTS (SELECT 1 FROM {run} WHERE {run}.{column(Run, 'run_id')} = %s "
        f"AND {run}.{column(Run, 'status')} = %s AND {run}.{column(Run, 'worker')} = %s "
        f"AND {run}.{column(Run, 'attempts')} = %s)"
    )


def claim_held_params(run_id: Any, worker: str, attempts: int) -> list[Any]:
    return [prep(Run, "run_id", run_id), RunStatus.RUNNING.value, worker, attempts]


# --- events -------------------------------------------------------------------------------------

_EVENT_FIELDS = ("run", "seq", "event", "data", "thread_only", "created_at")


@lru_cache(maxsize=64)
def events_insert_sql(vendor: str, rows: int, fence_sql: str | None = None) -> str:
    """The INSERT of ``rows`` events; with ``fence_sql`` (a worker's ``claim_held_sql``), of those
    rows only where it holds: its parameters follow the rows'."""
    columns = ", ".join(column(RunEvent, name) for name in _EVENT_FIELDS)
    row = f"({', '.join(['%s'] * len(_EVENT_FIELDS))})"
    values = f"VALUES {', '.join([row] * rows)}"
    if fence_sql is not None:
        values = f"SELECT * FROM ({values}) AS fenced WHERE {fence_sql}"
    return f"INSERT INTO {table(RunEvent)} ({columns}) {values}"


def events_insert(cursor: Any, events: Iterable[EventRow], *, fence: Fence | None = None) -> None:
    """Store events (one statement per ``EVENT_ROWS_PER_STATEMENT``). With a ``fence`` (a
    worker's claim: ``claim_held_sql`` and ``claim_held_params``), only while it holds: else
    ``FenceClosed``, and the statement stored none of them."""
    run_field = RunEvent._meta.get_field("run")
    created_field = RunEvent._meta.get_field("created_at")
    batch: list[Any] = []
    count = 0

    def flush() -> None:
        if fence is None:
            cursor.execute(events_insert_sql(connection.vendor, count), batch)
            return
        cursor.execute(events_insert_sql(connection.vendor, count, fence[0]), [*batch, *fence[1]])
        if cursor.rowcount != count:
            raise FenceClosed(f"events of run {events_run} refused: its worker lost the run")

    events_run = None
    for run_id, seq, event, data, thread_only, created_at in events:
        events_run = run_id
        batch += (
            run_field.get_db_prep_save(run_id, connection), seq, event, data, thread_only,
            created_field.get_db_prep_save(created_at, connection),
        )
        count += 1
        if count == EVENT_ROWS_PER_STATEMENT:
            flush()
            batch, count = [], 0
    if count:
        flush()
