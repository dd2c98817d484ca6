"""The saver's statements of every graph step, written out from the models' table and column
names: reading a checkpoint with its pending writes, saving a checkpoint, saving writes.

A run of a one-node graph makes about five of these; composing them through the ORM (querysets,
lookups, compilers, a model instance per row) cost more CPU than running them. Each text is
built once per database (vendor and alias); values go through the fields' ``get_db_prep_save``
and ``from_db_value``, so rows are written and read exactly as the ORM would, through Django's
cursor (query logging, error wrapping). Rows come back as named tuples, not model instances.

A write may be fenced: given a ``Fence`` (an SQL condition and its parameters, such as "the run
this worker writes for is still its own"), the write's rows are an ``INSERT … SELECT … WHERE``
the condition, in the same statement: a writer that lost what it wrote for changes nothing, at
no extra round trip. A fenced checkpoint that is refused raises ``FenceClosed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple, cast

from django.db import connections
from django.db.models import Field

from checkpoints.models import Checkpoint, CheckpointWrite

# An SQL condition (with %s placeholders) and its parameters, checked by a fenced write.
Fence = tuple[str, Sequence[Any]]


class FenceClosed(Exception):
    """A fenced write was refused: its writer no longer holds what it writes for."""


class CheckpointRow(NamedTuple):
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    type: str
    checkpoint: bytes
    metadata: Any


class WriteRow(NamedTuple):
    task_id: str
    idx: int
    channel: str
    task_path: str
    type: str
    value: bytes


# Columns of a CheckpointRow read from the table (thread_id and checkpoint_ns are the query's).
_CHECKPOINT_READ = ("checkpoint_id", "parent_checkpoint_id", "type", "checkpoint", "metadata")
_WRITE_READ = ("task_id", "idx", "channel", "task_path", "type", "value")

_CHECKPOINT_SAVED = (
    "thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "run_id", "type",
    "checkpoint", "metadata", "created_at",
)
_CHECKPOINT_KEY = ("thread_id", "checkpoint_ns", "checkpoint_id")
_WRITE_SAVED = (
    "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "task_path",
    "type", "value", "created_at",
)
_WRITE_KEY = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx")
_WRITE_REPLACED = ("channel", "task_path", "type", "value")


def _names(alias: str):
    quote = connections[alias].ops.quote_name

    def table(model) -> str:
        return quote(model._meta.db_table)

    def column(model, name: str, of: str = "") -> str:
        return f"{of}{'.' if of else ''}{quote(model._meta.get_field(name).column)}"

    return quote, table, column


@cache
def checkpoint_read_sql(vendor: str, alias: str, by_id: bool) -> str:
    """One statement for a checkpoint (the given id, or the latest of a thread namespace) and
    its pending writes: rows ``(0, checkpoint columns..., NULL...)`` and ``(1, NULL..., write
    columns...)``."""
    quote, table, column = _names(alias)
    checkpoints, writes = table(Checkpoint), table(CheckpointWrite)
    where = f"{column(Checkpoint, 'thread_id')} = %s AND {column(Checkpoint, 'checkpoint_ns')} = %s"
    picked = (
        f"{where} AND {column(Checkpoint, 'checkpoint_id')} = %s"
        if by_id
        else f"{where} ORDER BY {column(Checkpoint, 'checkpoint_id')} DESC LIMIT 1"
    )
    nulls_for_writes = ", ".join(["NULL"] * len(_WRITE_READ))
    nulls_for_checkpoint = ", ".join(["NULL"] * len(_CHECKPOINT_READ))
    checkpoint_columns = ", ".join(column(Checkpoint, name) for name in _CHECKPOINT_READ)
    write_columns = ", ".join(column(CheckpointWrite, name, "w") for name in _WRITE_READ)
    if by_id:
        of_checkpoint = "%s"
    else:
        of_checkpoint = (
            f"(SELECT MAX({column(Checkpoint, 'checkpoint_id')}) FROM {checkpoints} WHERE {where})"
        )
    # The checkpoint's own SELECT sits in a derived table: a compound SELECT takes an ORDER BY
    # and LIMIT only at its end.
    return (
        f"SELECT 0, {checkpoint_columns}, {nulls_for_writes} FROM "
        f"(SELECT {checkpoint_columns} FROM {checkpoints} WHERE {picked}) {quote('c')} "
        f"UNION ALL "
        f"SELECT 1, {nulls_for_checkpoint}, {write_columns} FROM {writes} {quote('w')} "
        f"WHERE {column(CheckpointWrite, 'thread_id', 'w')} = %s "
        f"AND {column(CheckpointWrite, 'checkpoint_ns', 'w')} = %s "
        f"AND {column(CheckpointWrite, 'checkpoint_id', 'w')} = {of_checkpoint}"
    )


def checkpoint_read(
    alias: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str | None
) -> tuple[CheckpointRow | None, list[WriteRow]]:
    """The checkpoint (``checkpoint_id``, or the latest) and its pending writes, in one
    statement; (None, ...) if there is no such checkpoint."""
    connection = connections[alias]
    by_id = bool(checkpoint_id)
    # By id: (thread, namespace, id) for the checkpoint and for its writes; the latest: (thread,
    # namespace) for the checkpoint, for the writes and for the writes' MAX(id).
    params = [thread_id, checkpoint_ns, checkpoint_id] * 2 if by_id else [thread_id, checkpoint_ns] * 3
    with connection.cursor() as cursor:
        cursor.execute(checkpoint_read_sql(connection.vendor, alias, by_id), params)
        rows = cursor.fetchall()
    checkpoint = None
    writes = []
    metadata_field = Checkpoint._meta.get_field("metadata")
    start = 1 + len(_CHECKPOINT_READ)
    for row in rows:
        if row[0] == 0:
            checkpoint_id, parent_id, type_, blob, metadata = row[1:start]
            checkpoint = CheckpointRow(
                thread_id, checkpoint_ns, checkpoint_id, parent_id, type_, blob,
                # The stubs want an expression; JSONField only looks at it for key transforms.
                metadata_field.from_db_value(metadata, None, connection),  # type: ignore[arg-type]
            )
        else:
            writes.append(WriteRow(*row[start:]))
    if checkpoint is None:
        return None, []
    return checkpoint, writes


def _rows(columns: int, rows: int, fence_sql: str | None) -> str:
    """The rows of an INSERT: ``VALUES …``, or fenced, a SELECT of them where the fence holds."""
    row = f"({', '.join(['%s'] * columns)})"
    if fence_sql is None:
        return f"VALUES {', '.join([row] * rows)}"
    # The WHERE also keeps SQLite from reading the ON CONFLICT that follows as a join's ON.
    return f"SELECT * FROM (VALUES {', '.join([row] * rows)}) AS fenced WHERE {fence_sql}"


@cache
def checkpoint_upsert_sql(vendor: str, alias: str, fence_sql: str | None = None) -> str:
    """``put``'s insert-or-replace, the statement ``bulk_create(update_conflicts=True)`` makes
    (SQLite and PostgreSQL both say ON CONFLICT ... DO UPDATE), written out because bulk_create
    also wraps it in a transaction of its own: a BEGIN and a COMMIT, two round trips on
    PostgreSQL, around one statement that is atomic anyway."""
    _, table, column = _names(alias)
    columns = [column(Checkpoint, name) for name in _CHECKPOINT_SAVED]
    key = [column(Checkpoint, name) for name in _CHECKPOINT_KEY]
    updates = [
        f"{quoted} = EXCLUDED.{quoted}"
        for name, quoted in zip(_CHECKPOINT_SAVED, columns, strict=True)
        if name not in _CHECKPOINT_KEY and name != "created_at"
    ]
    return (
        f"INSERT INTO {table(Checkpoint)} ({', '.join(columns)}) "
        f"{_rows(len(columns), 1, fence_sql)} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(updates)}"
    )


def checkpoint_upsert(
    alias: str, row: CheckpointRow, run_id: str | None, now: datetime, fence: Fence | None = None
) -> None:
    """Store ``row`` (or replace it); with a ``fence`` that does not hold, ``FenceClosed``."""
    connection = connections[alias]
    values = {**row._asdict(), "run_id": run_id, "created_at": now}
    params = [
        cast(Field, Checkpoint._meta.get_field(name)).get_db_prep_save(values[name], connection)
        for name in _CHECKPOINT_SAVED
    ]
    fence_sql = None
    if fence is not None:
        fence_sql = fence[0]
        params += fence[1]
    with connection.cursor() as cursor:
        cursor.execute(checkpoint_upsert_sql(connection.vendor, alias, fence_sql), params)
        # An insert or an update counts one row; a refused SELECT none.
        if fence is not None and cursor.rowcount == 0:
            raise FenceClosed(f"checkpoint {row.checkpoint_id} of thread {row.thread_id} refused")


@lru_cache(maxsize=64)
def writes_insert_sql(
    vendor: str, alias: str, rows: int, replace: bool, fence_sql: str | None = None
) -> str:
    """Writes, as many as ``rows``: kept if already there (ordinary writes: a retried task never
    duplicates them), or with ``replace`` overwritten (the special channels' fixed slots)."""
    _, table, column = _names(alias)
    columns = [column(CheckpointWrite, name) for name in _WRITE_SAVED]
    if replace:
        key = ", ".join(column(CheckpointWrite, name) for name in _WRITE_KEY)
        updates = ", ".join(
            f"{column(CheckpointWrite, name)} = EXCLUDED.{column(CheckpointWrite, name)}"
            for name in _WRITE_REPLACED
        )
        conflict = f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    else:
        conflict = "ON CONFLICT DO NOTHING"
    return (
        f"INSERT INTO {table(CheckpointWrite)} ({', '.join(columns)}) "
        f"{_rows(len(columns), rows, fence_sql)} {conflict}"
    )


# Rows per INSERT of writes (10 parameters each); more go in further statements.
WRITES_PER_STATEMENT = 500


def writes_insert(
    alias: str, key: tuple[str, str, str], writes: Sequence[WriteRow], now: datetime, *,
    replace: bool, fence: Fence | None = None,
) -> None:
    """Store ``writes``. With a ``fence`` that does not hold, none is stored, silently: a row
    count cannot tell that from ordinary writes already there."""
    connection = connections[alias]
    fence_sql, fence_params = fence if fence is not None else (None, ())
    # Concrete columns, not relations: Fields.
    fields = [cast(Field, CheckpointWrite._meta.get_field(name)) for name in _WRITE_SAVED]
    created_at = fields[-1].get_db_prep_save(now, connection)
    value_field = CheckpointWrite._meta.get_field("value")
    with connection.cursor() as cursor:
        for start in range(0, len(writes), WRITES_PER_STATEMENT):
            chunk = writes[start : start + WRITES_PER_STATEMENT]
            params: list[Any] = []
            for write in chunk:
                params += (
                    *key, write.task_id, write.idx, write.channel, write.task_path, write.type,
                    value_field.get_db_prep_save(write.value, connection), created_at,
                )
            params += fence_params
            cursor.execute(
                writes_insert_sql(connection.vendor, alias, len(chunk), replace, fence_sql), params
            )
