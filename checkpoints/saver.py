"""A LangGraph checkpoint saver on Django models: ``DjangoCheckpointSaver``.

Storage layout
--------------
Two tables (``checkpoints.models``):

``Checkpoint``
    One row per checkpoint, keyed by (thread_id, checkpoint_ns, checkpoint_id). The whole
    checkpoint, channel values included, is one ``serde.dumps_typed`` blob (``type`` +
    ``checkpoint``). ``metadata`` is a plain JSON column so ``list(filter=...)`` is a SQL
    ``WHERE`` on SQLite and PostgreSQL alike; ``run_id`` is copied out of it so deleting a run's
    checkpoints (rollback) is an index lookup. ``parent_checkpoint_id`` gives history and
    ``parent_config``.
``CheckpointWrite``
    One row per pending write, keyed by (thread_id, checkpoint_ns, checkpoint_id, task_id,
    idx), value serialized the same way. Writes to the special channels of ``WRITES_IDX_MAP``
    (errors, interrupts, resumes, scheduled) take fixed negative ``idx`` slots and overwrite;
    ordinary writes are insert-or-ignore, so a retried task never duplicates them (the
    semantics of LangGraph's ``InMemorySaver``).

Why whole checkpoints rather than the PostgresSaver's blob-per-channel-version table: LangGraph
hands ``put`` a checkpoint holding every channel's value, so one blob is the simplest layout that
is always complete. Blobs per version only save the channels a step did not touch, at the price
of a third table, a join on every read, and reference counting in ``prune``,
``delete_for_runs`` and ``copy_thread``. Threads whose state grows with every step
(message lists) are better served by LangGraph's ``DeltaChannel``, which this layout supports
through the base class's ancestor walk.

Checkpoint ids are uuid6 strings whose text order is their time order: "latest" is the highest
id of a (thread, namespace), served backwards by the unique index; ``before`` is ``id < x``.

The statements of every graph step (a checkpoint read with its pending writes, in one
statement; a checkpoint saved; writes saved) are written out in ``checkpoints.sql``; the rest
goes through the ORM.

Threads and connections
-----------------------
Django's ORM is synchronous and must not run on an event loop's thread. The sync methods use
the ORM directly; each async method runs its sync twin in **one** ``sync_to_async`` hop with
``thread_sensitive=True`` (Django's own choice for its async ORM). So the saver works

* in ASGI views: calls run in the request's sync thread, with its connection;
* in a worker that runs a graph with ``async_to_sync(graph.ainvoke)(...)``: calls run back in the
  worker's own thread, on the connection the runtime already holds;
* under a bare ``asyncio.run(...)``: calls run in asgiref's single shared thread, one
  connection for all graphs of the process;
* in a worker's run, through a ``sole_writer()`` saver: its work goes where the run's writer
  sends it (``submit``, ``post``), and what it remembers is answered without a hop.

Threads we do not control need connection hygiene Django only does around requests: an async
call first drops its thread's connection if it is broken or past ``CONN_MAX_AGE`` (never inside
a transaction; checked when the connection sat unused for ``CONNECTION_RECHECK_SECONDS`` or
after an error, not before every call of a running graph); a sync call that had to open a
connection closes it again, because sync graphs call ``put``/``put_writes`` from short-lived
pool threads whose connections would otherwise linger until garbage collection (or hold a
PostgreSQL pool slot).

``prune(strategy="keep_latest")`` leaves alone a namespace whose latest checkpoint records
un-snapshotted ``DeltaChannel`` updates (``counters_since_delta_snapshot`` in its metadata):
dropping its ancestors would lose state that only their writes hold.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import inspect
import math
import random
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from datetime import date, datetime, time
from functools import partial
from time import monotonic
from typing import Any, TypeVar, cast

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Exists, Max, OuterRef, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    SerializerProtocol,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.base import Checkpoint as CheckpointData

from checkpoints import sql
from checkpoints.models import Checkpoint, CheckpointWrite
from checkpoints.sql import CheckpointRow, WriteRow

T = TypeVar("T")

# Rows fetched per query by list(): bounds memory for long histories without a round trip per row.
LIST_PAGE_SIZE = 100
# OR-ed (thread, namespace) groups per statement: SQLite nests OR terms, and its parser allows
# an expression depth of 1000.
GROUPS_PER_STATEMENT = 100
# Thread or run ids per IN (...) list.
IDS_PER_STATEMENT = 500
# Rows moved per statement by copy_thread.
COPY_BATCH_SIZE = 500
# An async call checks its thread's connection (broken? past CONN_MAX_AGE?) when the connection
# sat unused this long, or after an error. Checking before every call cost a `SELECT 1` round
# trip each on PostgreSQL with health checks on: seven per run of a one-node graph.
CONNECTION_RECHECK_SECONDS = 1.0

CheckpointKey = tuple[str, str, str]  # (thread_id, checkpoint_ns, checkpoint_id)
ListCursor = tuple[str, int]  # (checkpoint_id, pk) of the last row of a page
# A sole writer's runner of its async calls' work: await submit(work, write=...) -> work()
Submit = Callable[..., Awaitable[Any]]
# ... and of writes it does not wait for: post(work) -> the future of work()
Post = Callable[[Callable[[], Any]], "asyncio.Future[Any]"]


class DjangoCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer storing checkpoints and pending writes in Django models.

    ``using`` names the database alias (default: ``"default"``). Safe to share between threads
    and event loops: it keeps no state besides the serializer.

    ``sole_writer()`` gives a saver for a caller that is the only writer of the threads it
    writes, such as a worker running a thread's one running run: it remembers the newest
    checkpoint it wrote in each (thread, namespace) and the writes put on it, and answers
    ``get_tuple`` of that latest checkpoint from memory instead of two queries. Use one per run
    and drop it after; ``forget()`` if something else changed the thread's checkpoints meanwhile.
    Its ``submit``, if given, runs the async calls' work instead of the saver's own thread hop:
    ``await submit(work, write=...)`` must call ``work()`` in this saver's sync thread, in the
    order of submission, and may do so inside a transaction of several (the run's other
    writes); ``check_connection()`` is then the caller's to call outside such transactions.
    With ``post`` as well, ``aput`` does not wait for its checkpoint to be stored:
    ``post(work)`` queues ``work()`` like ``submit`` and returns its future at once, and the
    caller must fail the run if it fails (LangGraph chains its checkpoint saves, each waiting
    for the one before: posted, a run's saves share transactions instead of taking one each).
    Not for durability "sync", where the graph must wait for each checkpoint.
    With a ``fence`` (``checkpoints.sql.Fence``), every checkpoint and write it stores is
    conditional on that SQL condition, in the storing statement itself: a worker's claim of its
    run, so that a worker that lost the run (frozen past its heartbeat timeout) writes nothing to
    the thread. A refused checkpoint raises ``FenceClosed``; refused writes are dropped.
    """

    def __init__(
        self, *, serde: SerializerProtocol | None = None, using: str = DEFAULT_DB_ALIAS
    ) -> None:
        super().__init__(serde=serde)
        self.using = using
        self._memo: _LatestMemo | None = None
        self._submit: Submit | None = None
        self._post: Post | None = None
        # A sole writer's async writes submitted and not done yet (all on one event loop), and
        # the event set when there are none, made by the first wait for it.
        self._writes_in_flight = 0
        self._writes_idle: asyncio.Event | None = None
        self._fence: sql.Fence | None = None

    def sole_writer(
        self, submit: Submit | None = None, post: Post | None = None, fence: sql.Fence | None = None
    ) -> DjangoCheckpointSaver:
        assert post is None or submit is not None, "post comes with submit"
        # A copy rather than a new saver: BaseCheckpointSaver.__init__ checks its serde against
        # a runtime Protocol, a visible cost for a worker that makes one sole writer per run.
        saver = copy.copy(self)
        saver._writes_in_flight = 0
        saver._writes_idle = None
        saver._memo = _LatestMemo()
        saver._submit = submit
        saver._post = post
        saver._fence = fence
        return saver

    def prime(self, thread_id: str, checkpoint_ns: str = "") -> None:
        """Read a namespace's latest checkpoint and its writes into a ``sole_writer()`` saver's
        memory, from the calling thread: a worker does it on its own connection before the graph
        starts, whose first read is then answered without a trip to the sync thread."""
        assert self._memo is not None, "prime() is for a sole_writer() saver"
        row, writes = sql.checkpoint_read(self.using, str(thread_id), checkpoint_ns, None)
        self._memo.known((str(thread_id), checkpoint_ns), row, writes)

    def forget(self) -> None:
        """Drop what a ``sole_writer()`` saver remembers: reads go to the database again."""
        if self._memo is not None:
            self._memo.clear()

    # --- sync API ---------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._in_caller_thread(self._get_tuple, config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        cursor: ListCursor | None = None
        for size in _page_sizes(limit):
            page, cursor = self._in_caller_thread(
                self._list_page, config, filter, before, size, cursor
            )
            yield from page
            if len(page) < size:
                return

    def put(
        self,
        config: RunnableConfig,
        checkpoint: CheckpointData,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._in_caller_thread(self._put, config, checkpoint, metadata)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._in_caller_thread(self._put_writes, config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self._in_caller_thread(self._delete_threads, [thread_id])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._in_caller_thread(self._delete_for_runs, run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._in_caller_thread(self._copy_thread, source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._in_caller_thread(self._prune, thread_ids, strategy)

    # --- async API: one thread hop per call (none for what a sole writer knows) -------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        if self._memo is not None:
            # Once none of this saver's writes is under way, the memo holds all it wrote: what
            # it knows is answered here, without a trip to the sync thread (which would wait
            # for those writes too).
            await self._writes_done()
            answered, remembered = self._remembered(config)
            if answered:
                return remembered
        return await self._in_sync_thread(self._get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        cursor: ListCursor | None = None
        for size in _page_sizes(limit):
            page, cursor = await self._in_sync_thread(
                self._list_page, config, filter, before, size, cursor
            )
            for item in page:
                yield item
            if len(page) < size:
                return

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: CheckpointData,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        if self._post is not None:
            thread_id, checkpoint_ns = _thread_and_ns(config)
            # Serialized here: the run's writer may store it in a transaction with others, which
            # on SQLite holds the database's one write lock.
            row, run_id = self._checkpoint_row(config, checkpoint, metadata)
            self._write_started()
            try:
                future = self._post(partial(self._on_reused_connection, self._store_checkpoint, row, run_id))
            except BaseException:
                # Refused (the run's writes already failed): nothing is under way, and a read
                # waiting for the saves must not wait for this one.
                self._write_ended()
                raise
            future.add_done_callback(self._posted_write_ended)
            return _config(thread_id, checkpoint_ns, checkpoint["id"])
        return await self._in_sync_thread(self._put, config, checkpoint, metadata)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        if self._submit is not None:
            # A sole writer's writes share the run's transactions: serialized before, not inside.
            rows = self._write_rows(writes, task_id, task_path)
            await self._in_sync_thread(self._store_writes, config, rows)
            return
        await self._in_sync_thread(self._put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._in_sync_thread(self._delete_threads, [thread_id])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._in_sync_thread(self._delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._in_sync_thread(self._copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._in_sync_thread(self._prune, thread_ids, strategy)

    def get_next_version(self, current: str | float | None, channel: None) -> str:
        # Zero-padded so versions compare correctly as strings; the random fraction keeps two
        # branches forked from one checkpoint from minting the same version. Same format as
        # LangGraph's own savers, so versions read the same through the API.
        if current is None:
            number = 0
        elif isinstance(current, (int, float)):
            number = int(current)
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # --- thread and connection handling --------------------------------------------------------

    def _in_caller_thread(self, fn: Callable[..., T], /, *args: Any) -> T:
        connection = connections[self.using]
        opened_here = connection.connection is None
        try:
            return fn(*args)
        finally:
            if opened_here and not connection.in_atomic_block:
                connection.close()

    async def _in_sync_thread(self, fn: Callable[..., T], /, *args: Any) -> T:
        write = fn not in (self._get_tuple, self._list_page)
        counted = write and self._memo is not None
        if counted:
            self._write_started()
        try:
            if self._submit is not None:
                return await self._submit(partial(self._on_reused_connection, fn, *args), write=write)
            return await sync_to_async(self._on_reused_connection, thread_sensitive=True)(fn, *args)
        finally:
            if counted:
                self._write_ended()

    def _write_started(self) -> None:
        self._writes_in_flight += 1
        if self._writes_idle is not None:
            self._writes_idle.clear()

    def _write_ended(self) -> None:
        self._writes_in_flight -= 1
        if not self._writes_in_flight and self._writes_idle is not None:
            self._writes_idle.set()

    def _posted_write_ended(self, future: asyncio.Future) -> None:
        if not future.cancelled():
            future.exception()  # the poster fails the run with it; retrieved here, not logged
        self._write_ended()

    async def _writes_done(self) -> None:
        """Wait until none of a sole writer's async writes is under way (they run in order on
        the sync thread: ended, they are in the memo, or failed)."""
        if self._writes_in_flight:
            if self._writes_idle is None:
                self._writes_idle = asyncio.Event()
            await self._writes_idle.wait()

    def check_connection(self) -> None:
        """Drop this thread's connection if it is broken or past ``CONN_MAX_AGE`` (the next query
        reconnects): when it sat unused for a while or after an error. Never in a transaction."""
        connection = connections[self.using]
        last_used = getattr(_last_used, self.using, None)
        if not connection.in_atomic_block and (
            last_used is None
            or monotonic() - last_used >= CONNECTION_RECHECK_SECONDS
            or connection.errors_occurred
        ):
            connection.close_if_unusable_or_obsolete()

    def _on_reused_connection(self, fn: Callable[..., T], /, *args: Any) -> T:
        self.check_connection()
        try:
            return fn(*args)
        finally:
            setattr(_last_used, self.using, monotonic())

    # --- storage -----------------------------------------------------------------------------------

    def _checkpoints(self) -> QuerySet[Checkpoint]:
        return Checkpoint.objects.using(self.using)

    def _writes(self) -> QuerySet[CheckpointWrite]:
        return CheckpointWrite.objects.using(self.using)

    def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, checkpoint_ns = _thread_and_ns(config)
        checkpoint_id = get_checkpoint_id(config)
        if self._memo is not None:
            answered, remembered = self._remembered(config)
            if answered:
                return remembered
        row, stored_writes = sql.checkpoint_read(self.using, thread_id, checkpoint_ns, checkpoint_id)
        if row is None:
            return None
        if self._memo is not None and not checkpoint_id:
            self._memo.seen((thread_id, checkpoint_ns), row.checkpoint_id)
        return self._tuple(row, self._loaded_writes(stored_writes))

    def _remembered(self, config: RunnableConfig) -> tuple[bool, CheckpointTuple | None]:
        """(True, the tuple or None) if the memo knows what ``get_tuple`` would find."""
        thread_id, checkpoint_ns = _thread_and_ns(config)
        assert self._memo is not None  # asked only when there is a memo
        remembered = self._memo.latest((thread_id, checkpoint_ns), get_checkpoint_id(config))
        if remembered is None:
            return False, None
        row, stored_writes = remembered
        if row is None:
            return True, None
        return True, self._tuple(row, self._loaded_writes(stored_writes), copy.deepcopy(row.metadata))

    def _list_page(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        size: int,
        after: ListCursor | None,
    ) -> tuple[builtins.list[CheckpointTuple], ListCursor | None]:
        rows = self._checkpoints()
        if config:
            configurable = config.get("configurable", {})
            if configurable.get("thread_id") is not None:
                rows = rows.filter(thread_id=str(configurable["thread_id"]))
            if configurable.get("checkpoint_ns") is not None:
                rows = rows.filter(checkpoint_ns=configurable["checkpoint_ns"])
            if checkpoint_id := get_checkpoint_id(config):
                rows = rows.filter(checkpoint_id=checkpoint_id)
        if before and (before_id := get_checkpoint_id(before)):
            rows = rows.filter(checkpoint_id__lt=before_id)
        rows = _filter_metadata(rows, filter or {})
        if after is not None:
            after_id, after_pk = after
            rows = rows.filter(
                Q(checkpoint_id__lt=after_id) | Q(checkpoint_id=after_id, pk__lt=after_pk)
            )
        page = list(rows.order_by("-checkpoint_id", "-pk")[:size])
        if not page:
            return [], None
        writes = self._pending_writes([_key(row) for row in page])
        tuples = [self._tuple(row, writes.get(_key(row), [])) for row in page]
        return tuples, (page[-1].checkpoint_id, page[-1].pk)

    def _pending_writes(
        self, keys: Sequence[CheckpointKey]
    ) -> dict[CheckpointKey, builtins.list[PendingWrite]]:
        checkpoint_ids: dict[tuple[str, str], builtins.list[str]] = defaultdict(list)
        for thread_id, checkpoint_ns, checkpoint_id in keys:
            checkpoint_ids[(thread_id, checkpoint_ns)].append(checkpoint_id)
        stored: dict[CheckpointKey, builtins.list[CheckpointWrite]] = defaultdict(list)
        for groups in _chunks(list(checkpoint_ids.items()), GROUPS_PER_STATEMENT):
            where = Q()
            for (thread_id, checkpoint_ns), ids in groups:
                where |= Q(thread_id=thread_id, checkpoint_ns=checkpoint_ns, checkpoint_id__in=ids)
            for write in self._writes().filter(where):
                stored[_key(write)].append(write)
        return {key: self._loaded_writes(rows) for key, rows in stored.items()}

    def _loaded_writes(self, rows: Iterable[CheckpointWrite | WriteRow]) -> builtins.list[PendingWrite]:
        # Sorted here, not in SQL, so the order is Python's string order on every database
        # collation: pending writes must come in writes_sort_key order.
        return [
            (w.task_id, w.channel, self.serde.loads_typed((w.type, bytes(w.value))))
            for w in sorted(rows, key=lambda w: writes_sort_key(w.task_path, w.task_id, w.idx))
        ]

    def _tuple(
        self, row: Checkpoint | CheckpointRow, pending_writes: builtins.list[PendingWrite], metadata: Any = None
    ) -> CheckpointTuple:
        parent_config = (
            _config(row.thread_id, row.checkpoint_ns, row.parent_checkpoint_id)
            if row.parent_checkpoint_id
            else None
        )
        return CheckpointTuple(
            config=_config(row.thread_id, row.checkpoint_ns, row.checkpoint_id),
            checkpoint=self.serde.loads_typed((row.type, bytes(row.checkpoint))),
            metadata=row.metadata if metadata is None else metadata,
            parent_config=parent_config,
            pending_writes=pending_writes,
        )

    def _put(
        self, config: RunnableConfig, checkpoint: CheckpointData, metadata: CheckpointMetadata
    ) -> RunnableConfig:
        return self._store_checkpoint(*self._checkpoint_row(config, checkpoint, metadata))

    def _checkpoint_row(
        self, config: RunnableConfig, checkpoint: CheckpointData, metadata: CheckpointMetadata
    ) -> tuple[CheckpointRow, str | None]:
        """The row ``put`` stores (the checkpoint serialized), and its run id."""
        thread_id, checkpoint_ns = _thread_and_ns(config)
        type_, blob = self.serde.dumps_typed(checkpoint)
        stored_metadata = _jsonable(get_serializable_checkpoint_metadata(config, metadata))
        run_id = stored_metadata.get("run_id")
        row = CheckpointRow(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint["id"],
            # The config names the checkpoint this one was made from.
            parent_checkpoint_id=get_checkpoint_id(config),
            type=type_,
            checkpoint=blob,
            metadata=stored_metadata,
        )
        return row, None if run_id is None else str(run_id)

    def _store_checkpoint(self, row: CheckpointRow, run_id: str | None) -> RunnableConfig:
        # LangGraph saves the same checkpoint id again at exit (durability="exit"): last one wins.
        sql.checkpoint_upsert(self.using, row, run_id, timezone.now(), self._fence)
        if self._memo is not None:
            # Once committed: a submitted write may share a transaction that rolls back.
            transaction.on_commit(partial(self._memo.put, row), using=self.using)
        return _config(row.thread_id, row.checkpoint_ns, row.checkpoint_id)

    def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        self._store_writes(config, self._write_rows(writes, task_id, task_path))

    def _write_rows(self, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> builtins.list[WriteRow]:
        """The rows ``put_writes`` stores (values serialized), keyed by idx: two writes to one
        special channel in a call keep the last, and one upsert statement must not touch a row
        twice (PostgreSQL refuses)."""
        by_idx: dict[int, WriteRow] = {}
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            type_, blob = self.serde.dumps_typed(value)
            by_idx[idx] = WriteRow(task_id, idx, channel, task_path, type_, blob)
        return list(by_idx.values())

    def _store_writes(self, config: RunnableConfig, rows: builtins.list[WriteRow]) -> None:
        thread_id, checkpoint_ns = _thread_and_ns(config)
        checkpoint_id = config["configurable"]["checkpoint_id"]
        ordinary = [w for w in rows if w.idx >= 0]
        special = [w for w in rows if w.idx < 0]
        key = (thread_id, checkpoint_ns, checkpoint_id)
        now = timezone.now()
        # One statement is atomic on its own. Two share a transaction; in one of submitted
        # writes, without a savepoint of its own (two more statements): a failure fails that
        # transaction, whose writes the submitter then redoes one by one.
        together = (
            transaction.atomic(using=self.using, savepoint=self._submit is None)
            if (ordinary and special) or connections[self.using].in_atomic_block
            else nullcontext()
        )
        with together:
            if ordinary:
                sql.writes_insert(self.using, key, ordinary, now, replace=False, fence=self._fence)
            if special:
                sql.writes_insert(self.using, key, special, now, replace=True, fence=self._fence)
        if self._memo is not None:
            transaction.on_commit(
                partial(self._memo.put_writes, (thread_id, checkpoint_ns), checkpoint_id, ordinary, special),
                using=self.using,
            )

    def _delete_threads(self, thread_ids: Iterable[str]) -> None:
        self.forget()
        ids = [str(t) for t in thread_ids]
        for chunk in _chunks(ids, IDS_PER_STATEMENT):
            with transaction.atomic(using=self.using):
                self._writes().filter(thread_id__in=chunk).delete()
                self._checkpoints().filter(thread_id__in=chunk).delete()

    def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.forget()
        ids = [str(r) for r in run_ids]
        for chunk in _chunks(ids, IDS_PER_STATEMENT):
            of_runs = self._checkpoints().filter(run_id__in=chunk)
            with transaction.atomic(using=self.using):
                self._writes().filter(
                    Exists(
                        of_runs.filter(
                            thread_id=OuterRef("thread_id"),
                            checkpoint_ns=OuterRef("checkpoint_ns"),
                            checkpoint_id=OuterRef("checkpoint_id"),
                        )
                    )
                ).delete()
                of_runs.delete()

    def _copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.forget()
        source, target = str(source_thread_id), str(target_thread_id)
        with transaction.atomic(using=self.using):
            querysets: tuple[QuerySet[Any], ...] = (self._checkpoints(), self._writes())
            for queryset in querysets:
                last_pk = 0
                while batch := list(
                    queryset.filter(thread_id=source, pk__gt=last_pk).order_by("pk")[
                        :COPY_BATCH_SIZE
                    ]
                ):
                    last_pk = batch[-1].pk
                    for row in batch:
                        row.pk = None
                        row.thread_id = target
                    # Rows the target already has (an earlier copy) stay as they are.
                    queryset.bulk_create(batch, ignore_conflicts=True)

    def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        self.forget()
        ids = [str(t) for t in thread_ids]
        if strategy == "delete":
            self._delete_threads(ids)
            return
        if strategy != "keep_latest":
            raise ValueError(f"Unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'.")
        for chunk in _chunks(ids, GROUPS_PER_STATEMENT):
            heads = list(
                self._checkpoints()
                .filter(thread_id__in=chunk)
                .values("thread_id", "checkpoint_ns")
                .annotate(latest=Max("checkpoint_id"))
                .values_list("thread_id", "checkpoint_ns", "latest")
            )
            for groups in _chunks(heads, GROUPS_PER_STATEMENT):
                head_rows = Q()
                for thread_id, checkpoint_ns, latest in groups:
                    head_rows |= Q(
                        thread_id=thread_id, checkpoint_ns=checkpoint_ns, checkpoint_id=latest
                    )
                older = Q()
                for thread_id, checkpoint_ns, latest, metadata in (
                    self._checkpoints()
                    .filter(head_rows)
                    .values_list("thread_id", "checkpoint_ns", "checkpoint_id", "metadata")
                ):
                    if (metadata or {}).get("counters_since_delta_snapshot"):
                        continue
                    older |= Q(
                        thread_id=thread_id, checkpoint_ns=checkpoint_ns, checkpoint_id__lt=latest
                    )
                if not older:
                    continue
                with transaction.atomic(using=self.using):
                    self._writes().filter(older).delete()
                    self._checkpoints().filter(older).delete()


# LangGraph asks whether put_writes takes task_path through inspect.signature every time a graph
# starts (some 50 µs); a signature kept on the functions makes it a few times cheaper.
for _method in (DjangoCheckpointSaver.put_writes, DjangoCheckpointSaver.aput_writes):
    cast(Any, _method).__signature__ = inspect.signature(_method)

_last_used = threading.local()  # database alias -> when this thread's saver calls last used it

NamespaceKey = tuple[str, str]  # (thread_id, checkpoint_ns)


class _LatestMemo:
    """A ``sole_writer()`` saver's memory: per (thread, namespace), the newest checkpoint row it
    wrote and the write rows put on it, kept exactly as stored (ordinary writes first one wins,
    special ones last one wins), so a tuple built from them is the one the database would give.

    It answers only for the newest id in a namespace that no database read showed a newer id
    for; writes for a newer checkpoint that arrive before the checkpoint are kept for it. Rows
    are remembered once their transaction committed; ``known`` adds what a read found (the
    latest checkpoint and its writes, or that there is none). Async calls all run in one
    thread; the lock is for sync calls from other threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[NamespaceKey, CheckpointRow] = {}
        self._writes: dict[NamespaceKey, dict[str, dict[tuple[str, int], WriteRow]]] = {}
        self._db_newest: dict[NamespaceKey, str] = {}
        # Namespaces a read found without any checkpoint, while the memo has none of them.
        self._empty: set[NamespaceKey] = set()

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._writes.clear()
            self._db_newest.clear()
            self._empty.clear()

    def seen(self, key: NamespaceKey, checkpoint_id: str) -> None:
        with self._lock:
            self._empty.discard(key)
            if checkpoint_id > self._db_newest.get(key, ""):
                self._db_newest[key] = checkpoint_id

    def known(self, key: NamespaceKey, row: CheckpointRow | None, writes: list[WriteRow]) -> None:
        """What a read of the namespace's latest checkpoint found: ``row`` and its ``writes``,
        or no checkpoint at all."""
        with self._lock:
            current = self._rows.get(key)
            if row is None:
                if current is None:
                    self._empty.add(key)
                return
            self._empty.discard(key)
            if current is None or row.checkpoint_id >= current.checkpoint_id:
                self._rows[key] = row
                by_id = self._writes.get(key, {})
                kept = {i: w for i, w in by_id.items() if i > row.checkpoint_id}
                kept[row.checkpoint_id] = {(w.task_id, w.idx): w for w in writes}
                self._writes[key] = kept

    def put(self, row: CheckpointRow) -> None:
        key = (row.thread_id, row.checkpoint_ns)
        with self._lock:
            self._empty.discard(key)
            current = self._rows.get(key)
            if current is None or row.checkpoint_id >= current.checkpoint_id:
                self._rows[key] = row
                by_id = self._writes.get(key, {})
                # Writes of older checkpoints can no longer be asked for through the memo.
                self._writes[key] = {i: w for i, w in by_id.items() if i >= row.checkpoint_id}

    def put_writes(
        self, key: NamespaceKey, checkpoint_id: str,
        ordinary: list[WriteRow], special: list[WriteRow],
    ) -> None:
        with self._lock:
            current = self._rows.get(key)
            if current is not None and checkpoint_id < current.checkpoint_id:
                return
            stored = self._writes.setdefault(key, {}).setdefault(checkpoint_id, {})
            for write in ordinary:
                stored.setdefault((write.task_id, write.idx), write)
            for write in special:
                stored[(write.task_id, write.idx)] = write

    def latest(
        self, key: NamespaceKey, checkpoint_id: str | None
    ) -> tuple[CheckpointRow | None, list[WriteRow]] | None:
        """(the row, its writes) if the memo can answer; (None, []) if the namespace has no
        checkpoint (so none of any id); None if the memo does not know."""
        with self._lock:
            row = self._rows.get(key)
            if row is None and key in self._empty:
                return None, []
            if row is None or row.checkpoint_id < self._db_newest.get(key, ""):
                return None
            if checkpoint_id and checkpoint_id != row.checkpoint_id:
                return None
            return row, list(self._writes.get(key, {}).get(row.checkpoint_id, {}).values())


# --- helpers private to the saver --------------------------------------------------------------


def _thread_and_ns(config: RunnableConfig) -> tuple[str, str]:
    configurable = config["configurable"]
    return str(configurable["thread_id"]), configurable.get("checkpoint_ns") or ""


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


def _key(row: Checkpoint | CheckpointWrite) -> CheckpointKey:
    return (row.thread_id, row.checkpoint_ns, row.checkpoint_id)


def _page_sizes(limit: int | None) -> Iterator[int]:
    """Sizes of the pages list() fetches until ``limit`` rows (or all rows) are out."""
    if limit is None:
        while True:
            yield LIST_PAGE_SIZE
    remaining = max(limit, 0)
    while remaining > 0:
        size = min(remaining, LIST_PAGE_SIZE)
        yield size
        remaining -= size


def _filter_metadata(rows: QuerySet[Checkpoint], filter: dict[str, Any]) -> QuerySet[Checkpoint]:
    """Keep rows whose metadata equals ``filter`` on every key (missing counts as None).

    Keys go through KeyTransform rather than ``metadata__<key>`` so a key containing ``__`` is a
    key, not a lookup path.
    """
    for position, (key, value) in enumerate(filter.items()):
        alias = f"metadata_filter_{position}"
        rows = rows.alias(**{alias: KeyTransform(str(key), "metadata")})
        if value is None:
            rows = rows.filter(Q(**{f"{alias}__isnull": True}) | Q(**{alias: None}))
        else:
            rows = rows.filter(**{alias: _jsonable(value)})
    return rows


def _jsonable(value: Any) -> Any:
    """``value`` as JSON both databases accept: PostgreSQL's jsonb refuses NUL characters and
    NaN; objects JSON cannot hold are kept as their text (metadata is informative, and a run
    must not fail over it)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
