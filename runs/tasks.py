"""Worker side of a run: claim, run the graph with asyncio, watch for cancel, finish.

In a worker process, ``run_execute`` claims the run and hands it to the process's event loop
(``executions.worker_loop``), where up to ``RUNS_CONCURRENCY_PER_WORKER`` runs go on side by side;
elsewhere (tests, django-q2's sync mode) it drives the run itself on its thread's loop.

The claim is a conditional UPDATE pending -> running that skips runs with an older due pending
sibling on the same thread (FIFO) and that the partial unique index refuses while another run of
the thread is running (IntegrityError: the run stays pending, and the thread's running run
dispatches it when it ends). While the graph runs, its loop's watcher (``RunWatch``, one for all
the loop's runs) polls the rows every ``RUNS_CANCEL_CHECK_INTERVAL`` seconds (0.2 s) and beats
``heartbeat_at``; a cancel request (or
the row vanishing) cancels the graph's asyncio task, so the graph stops within that interval.
Every event a client may stream (``metadata`` first, each requested mode's chunks, ``error``)
is stored as a ``RunEvent`` (run, seq, event, data) before the run's final status, or in the
transaction that records it; events and the saver's checkpoint writes share transactions
(``RunWrites``), each waking the run's and thread's stream readers (``runs.wakeups``). The run
ends in one transaction (``finish``). The worker's own statements are written out once per
database (``runs.statements``), as are the saver's (``checkpoints.sql``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast
from uuid import UUID

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import Error as DatabaseFailure
from django.db import close_old_connections, connection, transaction
from django.db.models import Max
from django.utils import timezone
from django_q.exceptions import TimeoutException

from checkpoints.sql import Fence, FenceClosed
from executions import worker_loop
from project.realtime.sse import encode_data
from project.telemetry import job_reported
from runs import dispatch, statements, transitions
from runs.completion import run_ended_notify
from runs.graphs import GraphLoadError, GraphNotFound, checkpointer, graph_get, store_index
from runs.jsonable import to_json, to_json_encoded
from runs.models import CancelAction, Run, RunEvent, RunStatus, Thread
from runs.selectors import state_json
from runs.services.runs import run_delete_checkpoints
from runs.services.state import thread_state_fields
from runs.services.threads import temporary_thread_discard
from runs.stream_modes import GRAPH_MODE, MessagesV1, event_name
from runs.transitions import RunClaim
from runs.wakeups import run_changed, run_progressed

logger = logging.getLogger(__name__)

# The outcome of a run whose worker lost it (frozen past the heartbeat timeout, the run ended by
# recovery meanwhile): nothing of this worker's is recorded, not even the end.
SUPERSEDED = "superseded"
# The outcome of a run its worker gave back to the queue as it stopped (``release``).
RELEASED = "released"

def _cancel_check_interval() -> float:
    return float(getattr(settings, "RUNS_CANCEL_CHECK_INTERVAL", 0.2))


def _heartbeat_interval() -> float:
    return float(getattr(settings, "RUNS_HEARTBEAT_INTERVAL", 2.0))


def _timeout() -> float:
    default = max(60, int(getattr(settings, "EXECUTIONS_TIMEOUT", 3600)) - 30)
    return float(getattr(settings, "RUNS_TIMEOUT", default))


def _max_delay_in_worker() -> float:
    return float(getattr(settings, "RUNS_MAX_DELAY_IN_WORKER", 30))


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Outcome:
    """How a graph run ended. ``kind`` is a final RunStatus, or ``rollback`` / ``deleted``, or
    ``superseded`` (this worker lost the run: nothing to record)."""

    kind: str
    result: dict | None = None
    error: dict | None = None
    state: dict | None = None
    thread_gone: bool = False
    extra: dict = field(default_factory=dict)


def claim_run(run_id: UUID | str) -> Run | None:
    """pending -> running, in FIFO order per thread and never beside another running run: the
    claimed run (with its assistant's graph id), or None."""
    return transitions.run_claim(run_id=run_id, worker=_worker_name(), now=timezone.now())


def claim(run_id: UUID | str) -> bool:
    """pending -> running, in FIFO order per thread and never beside another running run."""
    return claim_run(run_id) is not None


def _graph_input(kwargs: dict) -> Any:
    command = kwargs.get("command")
    if command:
        # Here, not at the top: every process imports this module at start-up (recovery does),
        # and langgraph takes a second to import; only a process that runs a graph needs it.
        from langgraph.types import Command

        goto = command.get("goto")
        return Command(
            update=command.get("update"),
            resume=command.get("resume"),
            goto=goto if goto is not None else (),
        )
    return kwargs.get("input")


# Events waiting to be written beyond which the graph waits for the database (backpressure).
MAX_PENDING_EVENTS = 1000
# Turns of the event loop a batch waits before it is taken: what the graph's tasks submit in
# them joins it (a one-node graph's writes then take two batches, not four), while a run
# waiting on I/O loses a few microseconds.
BATCH_TURNS = 3

# (work, whether it writes, its future, whether it was posted: nobody waits for it)
Work = tuple[Callable[[], Any], bool, asyncio.Future, bool]


class RunWrites:
    """A run's writes to the database, in order, batching what arrives while a write is under way:
    its events, and the work its checkpoint saver submits (``DjangoCheckpointSaver.sole_writer``).

    The first write starts after a few turns of the event loop (``BATCH_TURNS``: what the
    graph's tasks submit in them joins); whatever arrives during a write goes in the next
    transaction, and so on: no added latency when the run is slow, one transaction (one BEGIN
    and COMMIT, one hop to the sync thread, one reader wake-up for its events) per batch when it
    is fast. LangGraph saves checkpoints and pending writes in the background (durability
    "async") while the run's events stream; its checkpoint saves, each waiting for the one
    before, are ``post``-ed (nobody waits for them), and the events left once the graph is done
    go in the run's last transaction (``hold_events``, ``unwritten``): a one-node graph's ten
    writes take two trips to the database.

    A batch that fails is redone one piece per transaction: a write that fails fails alone, as it
    would have on its own. Events or posted writes that still cannot be stored fail the run
    rather than be lost.

    With a ``fence`` (the worker's claim of the run), events are stored only while it holds, in
    the inserting statement; the run's saver is fenced the same way. A batch the fence refused
    is not redone: ``fenced_out`` is set and the run's writes fail with ``FenceClosed``.
    """

    def __init__(self, run: Run, last_seq: int, *, fence: Fence | None = None) -> None:
        self.run_id = run.pk
        self.thread_id = run.thread_id
        self.seq = last_seq
        self.fence = fence
        self.fenced_out = False
        # The saver's connection check, run before each batch's transaction (never inside one).
        self.check_connection: Callable[[], None] = lambda: None
        self._events: list[statements.EventRow] = []
        self._work: list[Work] = []
        self._writer: asyncio.Task | None = None
        self._hold_events = False

    async def put(self, event: str, data: Any = None, *, encoded: bytes | None = None) -> None:
        """Append an event (written in the background): its ``data``, or that data ``encoded``."""
        self.seq += 1
        if encoded is None:
            encoded = encode_data(data)
        self._events.append((self.run_id, self.seq, event, encoded.decode(), False, timezone.now()))
        if not self._start() and len(self._events) >= MAX_PENDING_EVENTS:
            await asyncio.shield(cast(asyncio.Task, self._writer))  # _start() left one running

    async def submit(self, work: Callable[[], Any], *, write: bool = True) -> Any:
        """``work()`` in the sync thread after everything submitted before; its result."""
        future = asyncio.get_running_loop().create_future()
        self._work.append((work, write, future, False))
        self._start()
        return await future

    def post(self, work: Callable[[], Any]) -> asyncio.Future:
        """``work()``, a write, in the sync thread after everything submitted before, without
        waiting for it: the future of its result. Since nobody may be waiting, its failure fails
        the run as an event's would."""
        future = asyncio.get_running_loop().create_future()
        self._work.append((work, True, future, True))
        self._start()
        return future

    def _start(self) -> bool:
        """Start a writer unless one is running; True if this started one."""
        if self._writer is not None and not self._writer.done():
            return False
        if self._writer is not None and (self._writer.cancelled() or self._writer.exception()):
            # A failed event write (or posted write) fails the run rather than losing it, and
            # fails what waits behind it: no writer will ever take that work.
            failure = (
                asyncio.CancelledError()
                if self._writer.cancelled()
                else cast(BaseException, self._writer.exception())
            )
            self._fail_pending(failure)
            raise failure
        self._writer = asyncio.create_task(self._write_pending())
        return True

    def _fail_pending(self, failure: BaseException) -> None:
        """Fail the work queued behind a failed write. Whoever waits for it (a saver's read that
        waits for its saves, a submitter) would otherwise wait forever: no event loop timer is
        left once the graph is done, so the worker hung with it."""
        work, self._work = self._work, []
        for _, _, future, posted in work:
            if not future.done():
                future.set_exception(failure)
                if posted:
                    future.exception()  # its poster hears of it through the run's failure

    async def _write_pending(self) -> None:
        write = partial(_write_batch, self)
        while True:
            # What the graph's tasks submit in the next turns of the loop joins the batch.
            for _ in range(BATCH_TURNS):
                await asyncio.sleep(0)
            if not (self._work or (self._events and not self._hold_events)):
                return
            events, self._events = self._events, []
            # Work whose caller was cancelled before it started is dropped, as an executor job
            # cancelled before it ran would be.
            work = [item for item in self._work if not item[2].done()]
            self._work = []
            try:
                outcomes, failure = await write(events, [(fn, writes) for fn, writes, _, _ in work])
            except BaseException as exc:
                for _, _, future, _ in work:
                    if not future.done():
                        future.set_exception(exc)
                self._fail_pending(exc)
                raise
            for (_, _, future, posted), (ok, value) in zip(work, outcomes, strict=True):
                if not future.done():
                    future.set_result(value) if ok else future.set_exception(value)
                if posted and not ok and failure is None:
                    failure = value
            if failure is not None:
                self._fail_pending(failure)
                raise failure

    def _store(self, events: list[statements.EventRow]) -> None:
        with connection.cursor() as cursor:
            statements.events_insert(cursor, events, fence=self.fence)
        run_progressed(self.run_id, self.thread_id)

    def _write(
        self, events: list[statements.EventRow], work: list[tuple[Callable[[], Any], bool]]
    ) -> tuple[list[tuple[bool, Any]], Exception | None]:
        """One batch: ((ok, result or exception) of each work, the events' failure or None)."""
        self.check_connection()
        try:
            return self._write_together(events, work), None
        except FenceClosed:
            # The worker lost the run: none of the batch may land, nor be tried again.
            self.fenced_out = True
            raise
        except Exception as exc:  # noqa: BLE001 a failed batch is retried piece by piece below
            if not events and len(work) == 1:
                return [(False, exc)], None
        # One piece failed and took the others down with it: each again, in its own transaction.
        outcomes: list[tuple[bool, Any]] = []
        for fn, _ in work:
            try:
                with transaction.atomic():
                    outcomes.append((True, fn()))
            except FenceClosed:
                self.fenced_out = True
                raise
            except Exception as exc:  # noqa: BLE001 handed to the piece's caller, who raises it
                outcomes.append((False, exc))
        events_failure = None
        if events:
            try:
                with transaction.atomic():
                    self._store(events)
            except Exception as exc:  # noqa: BLE001 returned, raised by the flusher to every waiter
                events_failure = exc
        return outcomes, events_failure

    def _write_together(
        self, events: list[statements.EventRow], work: list[tuple[Callable[[], Any], bool]]
    ) -> list[tuple[bool, Any]]:
        if not events and (len(work) == 1 or not any(writes for _, writes in work)):
            # Reads only (no transaction, no write lock), or one piece of work, which is atomic on
            # its own (a checkpoint is one statement): no BEGIN and COMMIT around it.
            return [(True, fn()) for fn, _ in work]
        with transaction.atomic():
            outcomes = [(True, fn()) for fn, _ in work]
            if events:
                self._store(events)
        return outcomes

    async def _writer_done(self) -> None:
        while self._writer is not None:
            writer = self._writer
            await asyncio.shield(writer)
            if writer is self._writer:
                self._writer = None

    async def drain(self) -> None:
        """Wait until everything put or submitted so far is done."""
        self._hold_events = False
        await self._writer_done()
        if self._events or self._work:
            await self._write_pending()

    def hold_events(self) -> None:
        """From now on, write events only along with other work: the graph is done, and the
        events left (``unwritten()``) go in the transaction that ends the run, one transaction
        fewer for a run's last values."""
        self._hold_events = True

    async def close(self) -> None:
        """Wait until everything submitted so far is done; the events left are ``unwritten()``."""
        self.hold_events()
        await self._writer_done()
        if self._work:
            await self._write_pending()

    def unwritten(self) -> list[statements.EventRow]:
        """The events not written yet, taken: the caller stores them."""
        events, self._events = self._events, []
        return events

    async def abandon(self) -> None:
        """Drop what is not written yet and wait for the write under way, however it ends: the
        worker lost the run, and nothing more of it may land (nor would: the writes are fenced)."""
        self._events = []
        self._fail_pending(FenceClosed(f"run {self.run_id}: its worker lost the run"))
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None


# One SyncToAsync for every batch of every run (making one inspects the function).
_write_batch = sync_to_async(RunWrites._write)


# Runs per statement of a watch's poll.
POLL_CHUNK = 500


def _poll_runs(claims: list[RunClaim], beat: bool) -> dict[UUID, tuple[str, str, str, int]]:
    """(status, cancel_action, worker, attempts) of each claim's run, by id; with ``beat``, after
    beating the heartbeat of those still running under their worker. A few statements for every
    run of the process rather than two per run.

    The beat names the worker, not each claim's attempt: a run goes back to pending only from a
    worker that is stopping (``release``), so the runs a live worker holds under its name are all
    its current claims; one that recovery ended or another worker took is not beaten."""
    rows: dict[UUID, tuple[str, str, str, int]] = {}
    try:
        for start in range(0, len(claims), POLL_CHUNK):
            chunk = claims[start:start + POLL_CHUNK]
            if beat:
                by_worker: dict[str, list[UUID]] = {}
                for claim in chunk:
                    by_worker.setdefault(claim.worker, []).append(claim.run_id)
                now = timezone.now()
                for worker, ids in by_worker.items():
                    Run.objects.filter(pk__in=ids, worker=worker, status=RunStatus.RUNNING).update(heartbeat_at=now)
            for pk, *row in Run.objects.filter(pk__in=[claim.run_id for claim in chunk]).values_list(
                "pk", "status", "cancel_action", "worker", "attempts"
            ):
                rows[pk] = cast(tuple[str, str, str, int], tuple(row))
    except DatabaseFailure:  # OperationalError, and InterfaceError once the link is closed
        # A dropped connection (database restart) stays broken until closed: close it so the
        # next poll reconnects, instead of failing every poll and missing every heartbeat.
        connection.close()
        raise
    return rows


class RunWatch:
    """The one watcher of every run on an event loop: every ``RUNS_CANCEL_CHECK_INTERVAL`` it
    reads their rows together (and every ``RUNS_HEARTBEAT_INTERVAL`` beats their heartbeats
    together) and stops the graph of each run cancelled, deleted or lost meanwhile. A watcher per
    run made two queries per run every 0.2 s: 500 a second for 100 runs in flight."""

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RunWatch] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.drivers: dict[UUID, RunDriver] = {}
        self._task: asyncio.Task | None = None

    @classmethod
    def of_running_loop(cls) -> RunWatch:
        loop = asyncio.get_running_loop()
        watch = cls._of_loop.get(loop)
        if watch is None:
            watch = cls._of_loop[loop] = cls()
        return watch

    def add(self, driver: RunDriver) -> None:
        self.drivers[driver.run.pk] = driver
        if self._task is None or self._task.done():  # none yet, or cancelled with a run's leftovers
            self._task = asyncio.create_task(self._watch())

    def discard(self, driver: RunDriver) -> None:
        if self.drivers.get(driver.run.pk) is driver:
            del self.drivers[driver.run.pk]

    async def _watch(self) -> None:
        poll = sync_to_async(_poll_runs)
        interval = _cancel_check_interval()
        beat_every = _heartbeat_interval()
        # By the clock, not by polls: a poll may wait behind the process's writes (hundreds of
        # runs in flight share its database thread), and ten slow polls outlasted the timeout.
        beaten_at = time.monotonic()
        while self.drivers:
            await asyncio.sleep(interval)
            watched = list(self.drivers.values())
            if not watched:
                break
            beat = time.monotonic() - beaten_at >= beat_every
            if beat:
                beaten_at = time.monotonic()
            try:
                rows = await poll([driver.claim for driver in watched], beat)
            except Exception:  # a failed poll must not kill the runs; the next one may work
                logger.exception("cancel check of %d runs failed", len(watched))
                continue
            for driver in watched:
                if self.drivers.get(driver.run.pk) is not driver:
                    continue  # ended during the poll
                reason = driver.stop_reason_from(rows.get(driver.run.pk))
                if reason:
                    self.discard(driver)
                    driver.stop(reason)
        self._task = None


class RunDriver:
    """Runs one claimed run's graph inside an event loop."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.kwargs = run.kwargs
        self.requested = list(self.kwargs.get("stream_mode") or ["values"])
        self.subgraphs = bool(self.kwargs.get("subgraphs"))
        # The last values chunk of the root graph, encoded: the run's result (decoded once, at
        # the end, rather than every chunk on the way).
        self._last_values: bytes | None = None
        self.interrupts: list | None = None
        # Every write of the run names this claim: one that recovery ended meanwhile (while
        # this worker was frozen) takes none of them.
        self.claim = RunClaim.of(run)
        fence = self.claim.fence()
        self.writes = RunWrites(run, 0, fence=fence)
        self.stop_reason: str | None = None
        self._task: asyncio.Task | None = None  # the graph's, while it runs
        self.saver = checkpointer()
        if hasattr(self.saver, "sole_writer"):
            # The run is its thread's one running run, the only writer of its checkpoints: the
            # saver answers the latest state from what it read and wrote instead of reading it
            # back, and its writes share the transactions of the run's events.
            # Unless each checkpoint must be stored before the graph goes on (durability "sync"),
            # its saves are posted: a one-node graph's writes then take two transactions.
            post = None if self.kwargs.get("durability") == "sync" else self.writes.post
            sole_writer = self.saver.sole_writer(submit=self.writes.submit, post=post, fence=fence)
            self.saver = sole_writer
            self.writes.check_connection = sole_writer.check_connection

    def prepare(self) -> None:
        """The reads before the graph starts, on the worker's own connection (in its thread)."""
        if self.run.attempts > 1:  # only an earlier attempt (a worker that died) left events
            self.writes.seq = _last_seq(self.run.pk)
        if hasattr(self.saver, "prime"):
            # The thread's latest checkpoint: the graph's first read is then answered from the
            # saver's memory rather than by a trip from the event loop to the sync thread.
            self.saver.prime(str(self.run.thread_id))

    @property
    def last_values(self) -> dict | None:
        """The last values chunk of the root graph, as plain JSON data."""
        return None if self._last_values is None else orjson.loads(self._last_values)

    # --- database calls, run in asgiref's sync thread ------------------------------------------

    def _poll(self, beat: bool) -> tuple[str, str, str, int] | None:
        """(status, cancel_action, worker, attempts) of the run; with ``beat``, after beating its
        heartbeat under this worker's claim."""
        try:
            if beat:
                Run.objects.filter(self.claim.holds(), status=RunStatus.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
            return (
                Run.objects.filter(pk=self.run.pk)
                .values_list("status", "cancel_action", "worker", "attempts")
                .first()
            )
        except DatabaseFailure:  # OperationalError, and InterfaceError once the link is closed
            # A dropped connection (database restart) stays broken until closed: close it so the
            # next poll reconnects, instead of failing every poll and missing every heartbeat.
            connection.close()
            raise

    # --- the graph ------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        # values is always streamed: its last chunk is the run's result.
        modes = {GRAPH_MODE[m] for m in self.requested if m in GRAPH_MODE} | {"values"}
        options: dict[str, Any] = {
            "stream_mode": sorted(modes),
            "subgraphs": self.subgraphs,
            "durability": self.kwargs.get("durability") or "async",
        }
        for key in ("interrupt_before", "interrupt_after"):
            if self.kwargs.get(key):
                options[key] = self.kwargs[key]
        if self.kwargs.get("context"):
            options["context"] = self.kwargs["context"]
        return options

    async def _chunks(self, graph: Any, config: dict) -> AsyncGenerator[tuple[tuple, str, Any]]:
        """(namespace, mode, chunk) from the graph; with the ``events`` mode, also the
        ``astream_events`` v2 events themselves, as (namespace, "events", event)."""
        graph_input = _graph_input(self.kwargs)
        options = self._options()
        # Closed here rather than when garbage-collected: the event loop outlives the run.
        if "events" not in self.requested:
            async with aclosing(graph.astream(graph_input, config, **options)) as stream:
                async for item in stream:
                    yield item if self.subgraphs else ((), *item)
            return
        root_run_id = None
        events = graph.astream_events(graph_input, config, version="v2", **options)
        async with aclosing(events):
            async for event in events:
                if root_run_id is None and not event.get("parent_ids"):
                    root_run_id = event.get("run_id")
                if "langsmith:hidden" not in (event.get("tags") or ()):
                    yield (), "events", event
                # astream_events runs astream underneath: the root's stream events carry its chunks.
                if event["event"] == "on_chain_stream" and event.get("run_id") == root_run_id:
                    item = event["data"]["chunk"]
                    yield item if self.subgraphs else ((), *item)

    async def _consume(self, graph: Any, config: dict) -> None:
        await self.writes.put("metadata", {"run_id": str(self.run.pk), "attempt": self.run.attempts})
        plain = {m for m in self.requested if m not in ("messages", "messages-tuple")}
        as_tuples = "messages-tuple" in self.requested
        messages_v1 = MessagesV1() if "messages" in self.requested else None
        async with aclosing(self._chunks(graph, config)) as chunks:
            async for namespace, mode, chunk in chunks:
                if mode == "messages":
                    if as_tuples:
                        await self.writes.put(event_name("messages", namespace), to_json(chunk))
                    if messages_v1 is not None:
                        for name, data in messages_v1.events(chunk):
                            await self.writes.put(event_name(name, namespace), data)
                    continue
                encoded = to_json_encoded(chunk)
                if mode == "values" and not namespace and encoded[:1] == b"{":
                    self._last_values = encoded
                if mode in plain:
                    await self.writes.put(event_name(mode, namespace), encoded=encoded)
        # The graph is done: the events left wait for the run's end rather than take a
        # transaction of their own.
        self.writes.hold_events()

    def stop_reason_from(self, row: tuple[str, str, str, int] | None) -> str | None:
        """Why the graph must stop, from its row as ``_poll`` reads it; None to go on."""
        if row is None:
            return "deleted"
        if row[0] != RunStatus.RUNNING or tuple(row[2:]) != (self.claim.worker, self.claim.attempt):
            # Nobody else moves a running run's status but recovery, which ended it: this
            # worker was frozen past its heartbeat timeout.
            return SUPERSEDED
        return row[1] or None

    def stop(self, reason: str) -> None:
        """Stop the graph (from the event loop): the run ends as ``reason`` says, unless its graph
        is done already (its end is being recorded)."""
        if self._task is not None and self._task.done():
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._task is not None:
            self._task.cancel()

    async def _why_fenced_out(self) -> str:
        """After a write the fence refused: ``deleted`` if the run's row is gone, else
        ``superseded`` (recovery ended the run while this worker was frozen). One read, on this
        rare path only."""
        row = await sync_to_async(self._poll)(False)
        return "deleted" if row is None else SUPERSEDED

    async def _state(self, graph: Any) -> dict:
        thread_config = {"configurable": {"thread_id": str(self.run.thread_id), "checkpoint_ns": ""}}
        snapshot = await graph.aget_state(thread_config)
        return state_json(snapshot)

    async def drive(self) -> Outcome:
        """The graph's run; what it wrote is stored, but for its last events (``unwritten()``),
        which ``finish`` stores with the run's end: a reader that sees the final status has all
        the events."""
        try:
            outcome = await self._drive()
        except BaseException:
            if self.writes.fenced_out:
                await self.writes.abandon()
            else:
                await self.writes.drain()
            raise
        if outcome.kind != SUPERSEDED:
            try:
                await self.writes.close()
            except FenceClosed:
                outcome = Outcome(SUPERSEDED)
        if outcome.kind == SUPERSEDED:
            await self.writes.abandon()
        return outcome

    async def _drive(self) -> Outcome:
        saver = self.saver
        try:
            # The owner's store, as the real server gives every run its store (imported here:
            # langgraph is slow to import, and only a worker running a graph needs it).
            from store.backend import DjangoStore

            graph = graph_get(
                self.run.assistant.graph_id,
                checkpointer=saver,
                store=DjangoStore(owner_id=self.run.owner_id, index=store_index()),
            )
        except (GraphNotFound, GraphLoadError) as exc:
            error = {"error": type(exc).__name__, "message": f"Graph not available: {exc}"}
            return Outcome(RunStatus.ERROR, result={"__error__": error}, error=error)
        config = dict(self.kwargs.get("config") or {})
        task = self._task = asyncio.create_task(self._consume(graph, config))
        if self.stop_reason is not None:  # released before the graph started
            task.cancel()
        watch = RunWatch.of_running_loop()
        watch.add(self)
        outcome: Outcome
        try:
            async with asyncio.timeout(_timeout()):
                await asyncio.shield(task)
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise
        except FenceClosed:
            self.stop_reason = await self._why_fenced_out()
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            error = {"error": "TimeoutError", "message": "The run exceeded its time limit."}
            outcome = Outcome(RunStatus.TIMEOUT, result={"__error__": error}, error=error)
            outcome.state = await self._state(graph)
            return outcome
        except Exception as exc:  # noqa: BLE001 whatever a graph raises ends its run as an error
            if self.writes.fenced_out:  # the graph failed since its writes were refused
                self.stop_reason = await self._why_fenced_out()
            else:
                error = {"error": type(exc).__name__, "message": str(exc) or type(exc).__name__}
                outcome = Outcome(RunStatus.ERROR, result={"__error__": error}, error=error)
                outcome.state = await self._state(graph)
                return outcome
        finally:
            watch.discard(self)
        if self.stop_reason is None and self.writes.fenced_out:  # a refused write the graph missed
            self.stop_reason = await self._why_fenced_out()
        if self.stop_reason == SUPERSEDED:
            await asyncio.gather(task, return_exceptions=True)
            return Outcome(SUPERSEDED)
        if self.stop_reason in (CancelAction.ROLLBACK, "deleted", RELEASED):
            await asyncio.gather(task, return_exceptions=True)
            try:
                await self.writes.drain()  # no checkpoint of the run may land after the deletion
            except FenceClosed:  # the run's row is gone: the fence refused what was left
                await self.writes.abandon()
            if self.stop_reason == RELEASED:  # its checkpoints go with the release (``release``)
                return Outcome(RELEASED)
            await sync_to_async(run_delete_checkpoints)(run_ids=[self.run.pk])
            if hasattr(saver, "forget"):
                saver.forget()  # what it remembers was just deleted
            return Outcome(self.stop_reason, state=await self._state(graph))
        if self.stop_reason == CancelAction.INTERRUPT:
            await asyncio.gather(task, return_exceptions=True)
            state = await self._state(graph)
            result = self.last_values if self._last_values is not None else state["values"]
            return Outcome(RunStatus.INTERRUPTED, result=result, state=state)
        state = await self._state(graph)
        result = self.last_values if self._last_values is not None else state["values"]
        return Outcome(RunStatus.SUCCESS, result=result or {}, state=state)


def _last_seq(run_id: UUID) -> int:
    return RunEvent.objects.filter(run_id=run_id).aggregate(m=Max("seq"))["m"] or 0


def final_events(
    run_id: UUID, outcome: Outcome, last_seq: int | None = None
) -> list[statements.EventRow]:
    """The ``error`` event of a failed run, and the thread stream's end-of-run marker.

    ``last_seq``: the run's highest event seq, when the caller knows it (the worker does)."""
    if last_seq is None:
        last_seq = _last_seq(run_id)
    now = timezone.now()
    events = []
    if outcome.kind in (RunStatus.ERROR, RunStatus.TIMEOUT) and outcome.error:
        events.append(("error", encode_data(outcome.error).decode(), False))
    events.append(
        ("metadata", encode_data({"status": "run_done", "run_id": str(run_id)}).decode(), True)
    )
    return [
        (run_id, last_seq + offset, event, data, thread_only, now)
        for offset, (event, data, thread_only) in enumerate(events, start=1)
    ]


# A connection used this recently is not checked again before the run's end is recorded.
CONNECTION_RECHECK_SECONDS = 1.0


def finish(
    run: Run, outcome: Outcome, last_seq: int | None = None, *,
    connection_used_at: float | None = None, events: list[statements.EventRow] | None = None,
) -> None:
    """Record the outcome, refresh the thread and start the thread's next run, if any, under the
    worker's claim of the run: if recovery ended the run first, nothing is recorded (the thread
    is another run's by now).

    One transaction of four statements: the thread lock with the thread's next run (which also
    says whether the thread stays busy), the run's end, its last ``events`` (not stored yet)
    and final events, and the thread's state. ``last_seq`` is the run's highest event seq if
    the caller knows it; ``connection_used_at`` (``time.monotonic()``) when this thread's
    connection last ran a query, if it knows that.
    """
    if (
        connection_used_at is None
        or time.monotonic() - connection_used_at >= CONNECTION_RECHECK_SECONDS
        or connection.errors_occurred
    ):
        # The connection may have died while the graph ran (a database restart); with health
        # checks on, this makes the next query test it and reconnect instead of failing the
        # run's record. Not after a short run: on PostgreSQL the test is a round trip.
        close_old_connections()
    now = timezone.now()
    thread_id = run.thread_id
    on_completion = run.on_completion
    # The large values are encoded before the transaction, which holds SQLite's write lock.
    result = statements.Prepared(statements.prep(Run, "result", outcome.result))
    thread_fields = _thread_fields(outcome, now)
    claim = RunClaim.of(run)
    with transaction.atomic(), connection.cursor() as cursor:
        thread_exists, following = statements.thread_lock(cursor, thread_id, run.pk)
        if outcome.kind in (CancelAction.ROLLBACK, "deleted"):
            # A deleted run's row is gone already; its thread is still to be refreshed.
            held = transitions.run_rollback_running(claim=claim) or outcome.kind == "deleted"
        else:
            ended, stored_on_completion = transitions.run_end(
                cursor, claim=claim, status=outcome.kind, result=result, error=outcome.error,
                now=now,
            )
            held = ended
            if ended:
                # In the transaction that ends the run: a stream reader that sees the final status
                # also sees these, and closes after them. (A run that something else ended, the
                # reaper, already has its final events: nothing may follow them.)
                statements.events_insert(
                    cursor, [*(events or ()), *final_events(run.pk, outcome, last_seq)]
                )
            on_completion = stored_on_completion or on_completion
            if ended and (run.kwargs or {}).get("webhook"):
                # Committed with the run's end; a deleted temporary thread has no values.
                keep = thread_exists and on_completion != "delete"
                values = outcome.state["values"] if keep and outcome.state is not None else None
                run_ended_notify(run_id=run.pk, values=values)
        run_changed(run.pk, thread_id)
        if thread_exists and held:
            statements.thread_update(cursor, thread_id, thread_fields, busy=following is not None)
            if following is not None and following[1] <= now:
                next_run_id = following[0]
                transaction.on_commit(lambda: dispatch.run_enqueue(next_run_id))
    if not thread_exists:
        # The thread was deleted while the graph ran; drop what the graph wrote since.
        temporary_thread_discard(thread_id=thread_id)
    elif on_completion == "delete" and held:
        temporary_thread_discard(thread_id=thread_id)


def _thread_fields(outcome: Outcome, now) -> dict[str, Any]:
    """The thread's fields after a run (for ``statements.thread_update``), what
    ``runs.services.state.thread_store_state`` records; its values already encoded."""
    if outcome.state is None:
        return {"updated_at": now}
    error = outcome.error if outcome.kind == RunStatus.ERROR else None
    fields = thread_state_fields(state=outcome.state, error=error, now=now)
    if "values" in fields:
        fields["values"] = statements.Prepared(statements.prep(Thread, "values", fields["values"]))
    return fields


def _wait_until_due(run: Run, *, sleep: bool = True) -> bool:
    """Sleep through a short after_seconds delay (unless not to ``sleep``: True then says the
    caller is to wait); hand a long one to django-q2's scheduler."""
    delay = (run.created_at - timezone.now()).total_seconds()
    if delay <= 0:
        return True
    if delay > _max_delay_in_worker():
        from django_q.models import Schedule
        from django_q.tasks import schedule

        schedule(
            "runs.tasks.run_execute",
            str(run.pk),
            name=f"run-{run.pk}-due",
            schedule_type=Schedule.ONCE,
            next_run=run.created_at,
        )
        return False
    if sleep:
        time.sleep(delay)
    return True


_local = threading.local()


def _event_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, kept from run to run. ``asyncio.run`` per run made a new loop,
    a new default executor (whose threads sync nodes run in) and swapped the SIGINT handler
    every time: a few milliseconds of a run that lasts a few milliseconds."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = _new_event_loop()
    return loop


def _new_event_loop() -> asyncio.AbstractEventLoop:
    return worker_loop.new_event_loop()


def _run_in_loop(coro: Any) -> Any:
    """``asyncio.run(coro)`` on the thread's kept loop: whatever the run left behind (tasks a
    graph spawned and never awaited) is cancelled before the next run starts."""
    loop = _event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        except BaseException:  # interrupted mid-run (a time limit): start the next run afresh
            _local.loop = None
            if not loop.is_running():
                loop.close()
            raise


def run_execute(run_id: str) -> str:
    """django-q2 entry point: run one run to a final state. Returns what happened, for logs.

    In a worker process with its event loop (``executions.worker_loop``), the run is claimed here
    and handed to that loop, and this returns at once (``handed over``): the worker takes its next
    task while the run goes on beside the others. Elsewhere (tests, django-q2's sync mode) the run
    is driven here, on this thread's own loop."""
    host = worker_loop.current()
    if host is not None:
        return _hand_over(host, run_id)
    close_old_connections()
    # The claim comes first: it is the common case, and it finds everything the checks below
    # would (a run gone, not pending, not due, or behind another run of its thread).
    run = claim_run(run_id)
    if run is None:
        pending = Run.objects.filter(pk=run_id, status=RunStatus.PENDING).first()
        if pending is None:
            return "skipped"
        if not _wait_until_due(pending):
            return "not due"
        run = claim_run(run_id)
        if run is None:
            return "waiting"
    with job_reported(
        kind="run", job_id=run.pk, target=run.assistant.graph_id, attempt=run.attempts
    ) as report:
        report.outcome = _execute_claimed(run)
        return report.outcome


def _execute_claimed(run: Run) -> str:
    run_id = run.pk
    connection_used_at = time.monotonic()
    driver = RunDriver(run)
    events: list[statements.EventRow] = []
    try:
        driver.prepare()
        outcome = _run_in_loop(driver.drive())
        events = driver.writes.unwritten()
    except TimeoutException:
        error = {"error": "TimeoutError", "message": "The worker's time limit was hit."}
        finish(run, Outcome(RunStatus.TIMEOUT, result={"__error__": error}, error=error))
        raise
    except FenceClosed:  # a write the fence refused outside the graph: the worker lost the run
        outcome = Outcome(SUPERSEDED)
    except Exception as exc:  # our own failure (database, checkpointer): the run must still end
        logger.exception("run %s failed outside its graph", run_id)
        outcome = _failure(exc)
    return _record(run, driver, outcome, events, connection_used_at=connection_used_at)


def _failure(exc: Exception) -> Outcome:
    error = {"error": type(exc).__name__, "message": str(exc) or type(exc).__name__}
    return Outcome(RunStatus.ERROR, result={"__error__": error}, error=error)


def _record(
    run: Run, driver: RunDriver, outcome: Outcome, events: list[statements.EventRow], *,
    connection_used_at: float | None,
) -> str:
    """The run's end as ``outcome`` says (or its release), in the caller's thread."""
    if outcome.kind == SUPERSEDED:
        logger.warning(
            "run %s: this worker's claim (attempt %d) was superseded while it was frozen or cut "
            "off (recovery ended the run); its graph stopped and nothing it wrote since was kept",
            run.pk, driver.claim.attempt,
        )
        return SUPERSEDED
    if outcome.kind == RELEASED:
        released = release(run)
        logger.warning("run %s %s as its worker stopped", run.pk, "released" if released else "not released")
        return RELEASED
    # After a failure of our own, events that did not make it are dropped: they may be what
    # failed, and the run's end must be recorded.
    finish(
        run, outcome, last_seq=driver.writes.seq, connection_used_at=connection_used_at,
        events=events,
    )
    return outcome.kind


def release(run: Run) -> bool:
    """Give a running run back to the queue under this worker's claim (its worker stopping), with
    the checkpoints its attempt wrote deleted in the same transaction: the next attempt starts
    from the thread's state before it, and applies its input once. False if the claim no longer
    held (recovery or a cancel ended the run first)."""
    close_old_connections()
    with transaction.atomic():
        if not transitions.run_release(claim=RunClaim.of(run), now=timezone.now()):
            return False
        run_delete_checkpoints(run_ids=[run.pk])
        transaction.on_commit(partial(dispatch.run_enqueue, run.pk))
    return True


def _hand_over(host: worker_loop.WorkerLoop, run_id: str) -> str:
    """Claim the run in this (the worker's) thread and hand it to the process's event loop."""
    host.take("runs")
    try:
        close_old_connections()
        run = claim_run(run_id)
        if run is None:
            pending = Run.objects.filter(pk=run_id, status=RunStatus.PENDING).first()
            if pending is None:
                return _given_back(host, "skipped")
            delay = (pending.created_at - timezone.now()).total_seconds()
            if delay > 0 and not _wait_until_due(pending, sleep=False):
                return _given_back(host, "not due")
            if delay <= 0:
                return _given_back(host, "waiting")  # behind a run of its thread: dispatched after it
            # Due soon: the loop waits for it, rather than this thread (it would take no task).
            host.spawn("runs", f"run {run_id}", partial(_claim_when_due, run_id, delay))
            return "handed over"
        driver = RunDriver(run)
        driver.prepare()
    except BaseException:
        host.give("runs")
        raise
    host.spawn("runs", f"run {run_id}", partial(_drive_claimed, run, driver))
    return "handed over"


def _given_back(host: worker_loop.WorkerLoop, what: str) -> str:
    host.give("runs")
    return what


async def _claim_when_due(run_id: str, delay: float, job: worker_loop.Job) -> str:
    await asyncio.sleep(delay)
    run = await sync_to_async(claim_run)(run_id)
    if run is None:
        return "waiting"
    driver = RunDriver(run)
    await sync_to_async(driver.prepare)()
    return await _drive_claimed(run, driver, job)


async def _drive_claimed(run: Run, driver: RunDriver, job: worker_loop.Job) -> str:
    """A claimed run on the worker's loop, beside the others, to its end (or release)."""
    with job_reported(
        kind="run", job_id=run.pk, target=run.assistant.graph_id, attempt=run.attempts
    ) as report:
        report.outcome = await _drive_on_loop(run, driver, job)
        return report.outcome


async def _drive_on_loop(run: Run, driver: RunDriver, job: worker_loop.Job) -> str:
    job.release = partial(driver.stop, RELEASED)
    events: list[statements.EventRow] = []
    try:
        outcome = await driver.drive()
        events = driver.writes.unwritten()
    except FenceClosed:
        outcome = Outcome(SUPERSEDED)
    except Exception as exc:
        logger.exception("run %s failed outside its graph", run.pk)
        outcome = _failure(exc)
    return await sync_to_async(_record)(run, driver, outcome, events, connection_used_at=None)
