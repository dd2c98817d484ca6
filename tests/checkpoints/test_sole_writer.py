"""``DjangoCheckpointSaver.sole_writer()``: the saver of a worker's run, which answers the latest
checkpoint of what it wrote from memory instead of reading it back, and the connection checks
of async calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from django.db import connections
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.serde.types import ERROR

from checkpoints import saver as saver_module
from checkpoints.saver import DjangoCheckpointSaver
from checkpoints.sql import FenceClosed
from tests.checkpoints.test_saver import put


@checkpointer_test(name="DjangoCheckpointSaver.sole_writer()")
async def sole_writer_saver() -> AsyncIterator[DjangoCheckpointSaver]:
    yield DjangoCheckpointSaver().sole_writer()


def newer_checkpoint() -> dict:
    """An empty checkpoint whose id sorts after those of every checkpoint made before it."""
    checkpoint = empty_checkpoint()
    checkpoint["id"] = str(uuid6(clock_seq=-1))
    return checkpoint


async def submit_in_sync_thread(work, *, write: bool):
    """A sole writer's ``submit`` that just runs the work, in asgiref's sync thread."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(work, thread_sensitive=True)()


class InOrder:
    """Runs submitted and posted work in the sync thread one after the other, in order: what a
    worker's ``RunWrites`` guarantees, without its batching."""

    def __init__(self) -> None:
        self._last: asyncio.Future | None = None

    async def submit(self, work, *, write: bool):
        return await self.post(work)

    def post(self, work) -> asyncio.Future:
        from asgiref.sync import sync_to_async

        before = self._last

        async def in_turn():
            if before is not None:
                await asyncio.wait([before])
            return await sync_to_async(work, thread_sensitive=True)()

        self._last = asyncio.get_running_loop().create_task(in_turn())
        return self._last


@checkpointer_test(name="DjangoCheckpointSaver.sole_writer(submit, post)")
async def posting_sole_writer_saver() -> AsyncIterator[DjangoCheckpointSaver]:
    runner = InOrder()
    yield DjangoCheckpointSaver().sole_writer(submit=runner.submit, post=runner.post)


# A fence that always holds: every write takes the fenced statements (INSERT … SELECT … WHERE).
OPEN_FENCE = ("%s = %s", [1, 1])
CLOSED_FENCE = ("%s = %s", [1, 0])


@checkpointer_test(name="DjangoCheckpointSaver.sole_writer(submit, post, fence)")
async def fenced_sole_writer_saver() -> AsyncIterator[DjangoCheckpointSaver]:
    runner = InOrder()
    yield DjangoCheckpointSaver().sole_writer(submit=runner.submit, post=runner.post, fence=OPEN_FENCE)


@pytest.mark.parametrize(
    "factory", [sole_writer_saver, posting_sole_writer_saver, fenced_sole_writer_saver],
    ids=["plain", "posting", "fenced"],
)
def test_a_sole_writer_saver_passes_the_conformance_suite(saver, factory):
    failures: list[str] = []

    def record(capability: str, test: str, passed: bool, error: str | None) -> None:
        if not passed:
            failures.append(f"{capability}.{test}\n{error}")

    report = asyncio.run(validate(factory, progress=ProgressCallbacks(on_test_result=record)))
    assert not failures, "\n".join(failures)
    assert report.conformance_level() == "FULL"


def same(a, b) -> bool:
    return (a.config, a.checkpoint, a.metadata, a.parent_config, a.pending_writes) == (
        b.config, b.checkpoint, b.metadata, b.parent_config, b.pending_writes
    )


def test_the_latest_checkpoint_it_wrote_is_read_without_a_query_and_as_stored(
    saver, django_assert_num_queries
):
    writer = saver.sole_writer()
    first = put(writer, "t", values={"n": 1})
    latest = put(writer, "t", parent=first, values={"n": 2}, note=("a", 1))
    writer.put_writes(latest, [("ch", "x"), ("ch", "y"), (ERROR, "first")], "task-b", "path")
    writer.put_writes(latest, [("ch", "again"), (ERROR, "second")], "task-b", "path")  # a retry
    writer.put_writes(latest, [("other", 1)], "task-a")
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    with django_assert_num_queries(0):
        remembered = writer.get_tuple(config)
        by_id = writer.get_tuple(latest)
    stored = saver.get_tuple(config)  # a plain saver reads the database

    assert same(remembered, stored) and same(by_id, stored)
    assert remembered.checkpoint["channel_values"] == {"n": 2}
    assert remembered.pending_writes == [
        ("task-a", "other", 1), ("task-b", ERROR, "second"), ("task-b", "ch", "x"), ("task-b", "ch", "y"),
    ]
    remembered.metadata["step"] = 99  # the caller's copy: the next read is unchanged
    assert writer.get_tuple(config).metadata == stored.metadata


def test_older_checkpoints_other_namespaces_and_forget_go_to_the_database(
    saver, django_assert_num_queries
):
    writer = saver.sole_writer()
    first = put(writer, "t")
    put(writer, "t", parent=first)
    put(writer, "t", ns="child")

    with django_assert_num_queries(1):
        assert writer.get_tuple(first).checkpoint["id"] == first["configurable"]["checkpoint_id"]
    with django_assert_num_queries(0):
        writer.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": "child"}})
    writer.forget()
    with django_assert_num_queries(1):
        writer.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})


def test_writes_that_arrive_before_their_checkpoint_are_kept_for_it(saver):
    # With durability="async" LangGraph does not wait for a put before putting writes on it.
    writer = saver.sole_writer()
    first = put(writer, "t")
    checkpoint = newer_checkpoint()
    ahead = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": checkpoint["id"]}}
    writer.put_writes(ahead, [("ch", 1)], "task")
    writer.put(first, checkpoint, {"source": "loop", "step": 1}, {})

    latest = writer.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
    assert latest.checkpoint["id"] == checkpoint["id"]
    assert latest.pending_writes == [("task", "ch", 1)]
    assert same(latest, saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}))


def test_a_newer_checkpoint_seen_in_the_database_is_never_shadowed(saver):
    writer = saver.sole_writer()
    mine = put(writer, "t")
    newer = put(saver, "t")  # somebody else's, newer: the contract is broken, but reads stay true
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    writer.forget()
    assert writer.get_tuple(config).config == newer  # read from the database, and remembered as seen
    writer.put(mine, saver.get_tuple(mine).checkpoint, {"source": "loop", "step": 0}, {})

    assert writer.get_tuple(config).config == newer


def recorded_checks(monkeypatch) -> list[bool]:
    """``errors_occurred`` at each connection check an async call makes."""
    checks: list[bool] = []
    wrapper_class = connections["default"].__class__
    real = wrapper_class.close_if_unusable_or_obsolete

    def counted(self):
        checks.append(self.errors_occurred)
        return real(self)

    monkeypatch.setattr(wrapper_class, "close_if_unusable_or_obsolete", counted)
    return checks


def test_async_calls_check_their_connection_after_a_pause_only(saver, monkeypatch):
    config = put(saver, "t")
    checks = recorded_checks(monkeypatch)
    clock = [saver_module.monotonic()]
    monkeypatch.setattr(saver_module, "monotonic", lambda: clock[0])
    counts: list[int] = []

    async def calls() -> None:
        await saver.aget_tuple(config)
        counts.append(len(checks))
        await saver.aget_tuple(config)  # right after: not checked
        counts.append(len(checks))
        clock[0] += saver_module.CONNECTION_RECHECK_SECONDS
        await saver.aget_tuple(config)  # after a pause: checked
        counts.append(len(checks))

    asyncio.run(calls())
    assert counts[1] == counts[0] and counts[2] == counts[1] + 1


def test_a_failed_call_makes_the_next_async_call_check_the_connection(saver, monkeypatch):
    config = put(saver, "t")
    checks = recorded_checks(monkeypatch)
    clock = saver_module.monotonic()  # stands still: only the error can cause a check
    monkeypatch.setattr(saver_module, "monotonic", lambda: clock)

    def failing(config):
        connections["default"].errors_occurred = True  # what Django sets on a database error
        raise RuntimeError("lost the connection")

    async def calls() -> None:
        await saver.aget_tuple(config)
        try:
            await saver._in_sync_thread(failing, config)
        except RuntimeError:
            pass
        before = len(checks)
        await saver.aget_tuple(config)
        assert checks[before:] == [True]

    asyncio.run(calls())


def test_a_submitter_runs_the_work_of_async_calls_and_only_committed_writes_are_remembered(saver):
    from asgiref.sync import sync_to_async
    from django.db import transaction

    flags: list[bool] = []
    roll_back = [False]

    class RolledBack(Exception):
        pass

    def in_transaction(work):
        try:
            with transaction.atomic():
                result = work()
                if roll_back[0]:
                    raise RolledBack
                return result
        except RolledBack:
            return None

    async def submit(work, *, write):
        flags.append(write)
        return await sync_to_async(in_transaction, thread_sensitive=True)(work)

    writer = saver.sole_writer(submit=submit)
    kept = put(saver, "t")
    latest = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    async def calls() -> None:
        stored = await writer.aget_tuple(kept)
        roll_back[0] = True
        checkpoint = newer_checkpoint()
        await writer.aput(kept, checkpoint, {"source": "loop", "step": 1}, {})
        roll_back[0] = False
        # Neither in the database nor remembered: the latest is still the kept one.
        assert (await writer.aget_tuple(latest)).config == stored.config

    asyncio.run(calls())
    assert flags == [False, True, False]
    assert saver.get_tuple(latest).config == kept


def test_a_primed_saver_answers_its_first_reads_from_memory(saver, django_assert_num_queries):
    first = put(saver, "t", values={"n": 1})
    saver.put_writes(first, [("ch", "x"), (ERROR, "e")], "task")
    latest = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    fresh = {"configurable": {"thread_id": "new", "checkpoint_ns": ""}}
    writer = saver.sole_writer()

    with django_assert_num_queries(2):  # a checkpoint with its writes, one statement each
        writer.prime("t")
        writer.prime("new")
    with django_assert_num_queries(0):
        remembered = writer.get_tuple(latest)
        by_id = writer.get_tuple(first)
        assert writer.get_tuple(fresh) is None  # known to have no checkpoint, of any id
        assert writer.get_tuple({"configurable": {**fresh["configurable"], "checkpoint_id": "x"}}) is None
    assert same(remembered, saver.get_tuple(latest)) and same(by_id, remembered)

    second = put(writer, "new")
    with django_assert_num_queries(0):
        assert writer.get_tuple(fresh).config == second
    assert same(writer.get_tuple(fresh), saver.get_tuple(fresh))


def test_async_reads_wait_for_the_writes_under_way_and_need_no_trip(saver):
    from asgiref.sync import sync_to_async

    trips: list[bool] = []

    async def submit(work, *, write):
        trips.append(write)
        return await sync_to_async(work, thread_sensitive=True)()

    writer = saver.sole_writer(submit=submit)
    kept = put(saver, "t")
    latest = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    checkpoint = newer_checkpoint()

    writer.prime("t")  # as a worker does, from its own thread

    async def calls() -> None:
        assert (await writer.aget_tuple(latest)).config == kept
        saving = asyncio.create_task(writer.aput(kept, checkpoint, {"source": "loop", "step": 1}, {}))
        await asyncio.sleep(0)  # the save is under way
        read = await writer.aget_tuple(latest)
        assert read.checkpoint["id"] == checkpoint["id"]
        await saving

    asyncio.run(calls())
    assert trips == [True]  # the save; the reads came from memory


def test_posted_saves_return_at_once_and_are_answered_once_stored(saver):
    from asgiref.sync import sync_to_async

    queue: list = []

    def post(work):
        future = asyncio.get_running_loop().create_future()
        queue.append((work, future))
        return future

    writer = saver.sole_writer(submit=submit_in_sync_thread, post=post)
    kept = put(saver, "t")
    latest = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    checkpoint = newer_checkpoint()

    async def calls() -> None:
        returned = await writer.aput(kept, checkpoint, {"source": "loop", "step": 1}, {})
        assert returned == {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": checkpoint["id"]}}
        assert len(queue) == 1
        assert (await sync_to_async(saver.get_tuple)(latest)).config == kept  # not stored yet
        reading = asyncio.create_task(writer.aget_tuple(latest))
        await asyncio.sleep(0.01)
        assert not reading.done()  # it waits for the posted save
        work, future = queue.pop()
        future.set_result(await sync_to_async(work, thread_sensitive=True)())
        assert (await reading).checkpoint["id"] == checkpoint["id"]

    asyncio.run(calls())
    assert saver.get_tuple(latest).checkpoint["id"] == checkpoint["id"]


def test_a_refused_posted_save_leaves_no_save_under_way(saver):
    # The run's writer refuses posts once its writes failed; a read waiting for the saves under
    # way must not wait for the refused one (it hung a worker forever).

    def post(work):
        raise ValueError("the run's writes failed")

    writer = saver.sole_writer(submit=submit_in_sync_thread, post=post)
    kept = put(saver, "t")
    latest = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    checkpoint = newer_checkpoint()

    async def calls() -> None:
        with pytest.raises(ValueError, match="writes failed"):
            await writer.aput(kept, checkpoint, {"source": "loop", "step": 1}, {})
        read = await asyncio.wait_for(writer.aget_tuple(latest), 5)
        assert read.config == kept

    asyncio.run(calls())


def test_a_closed_fence_refuses_checkpoints_and_drops_writes(saver):
    kept = put(saver, "t", values={"n": 1})
    saver.put_writes(kept, [("ch", "before")], "task")
    writer = saver.sole_writer(fence=CLOSED_FENCE)
    latest = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    stored = saver.get_tuple(latest)

    with pytest.raises(FenceClosed):
        writer.put(kept, newer_checkpoint(), {"source": "loop", "step": 1}, {})
    writer.put_writes(kept, [("ch", "after"), (ERROR, "boom")], "task-2")

    assert same(saver.get_tuple(latest), stored)
    assert stored.pending_writes == [("task", "ch", "before")]
    # Not remembered either: its reads answer what is stored.
    assert same(writer.get_tuple(latest), stored)


def test_an_open_fence_stores_as_an_unfenced_saver_does(saver):
    writer = saver.sole_writer(fence=OPEN_FENCE)
    first = put(writer, "t", values={"n": 1})
    latest = put(writer, "t", parent=first, values={"n": 2})
    writer.put_writes(latest, [("ch", "x"), (ERROR, "e")], "task")

    stored = saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
    assert stored.config == latest and stored.checkpoint["channel_values"] == {"n": 2}
    assert stored.pending_writes == [("task", ERROR, "e"), ("task", "ch", "x")]
