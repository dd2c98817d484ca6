"""DjangoCheckpointSaver behaviour beyond the conformance suite: write semantics, ordering,
paging, metadata queries, run deletion, pruning, versions and connection handling."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from django.db import connections
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT

from checkpoints import saver as saver_module
from checkpoints.models import Checkpoint, CheckpointWrite
from checkpoints.saver import DjangoCheckpointSaver


def put(
    saver: DjangoCheckpointSaver,
    thread_id: str,
    *,
    ns: str = "",
    parent: dict | None = None,
    values: dict | None = None,
    **metadata: Any,
) -> dict:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = str(uuid6(clock_seq=-1))
    checkpoint["channel_values"] = values or {}
    checkpoint["channel_versions"] = {k: saver.get_next_version(None, None) for k in values or {}}
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
    if parent:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    return saver.put(
        config,
        checkpoint,
        {"source": "loop", "step": 0, **metadata},
        checkpoint["channel_versions"],
    )


def ids(tuples) -> list[str]:
    return [t.config["configurable"]["checkpoint_id"] for t in tuples]


def test_ordinary_writes_are_kept_once_special_ones_are_overwritten(saver):
    config = put(saver, "t")

    saver.put_writes(
        config, [("answer", "first"), (ERROR, "error 1"), (INTERRUPT, "ask 1")], "task"
    )
    saver.put_writes(
        config, [("answer", "second"), (ERROR, "error 2"), (INTERRUPT, "ask 2")], "task"
    )

    writes = saver.get_tuple(config).pending_writes
    assert sorted(writes, key=repr) == sorted(
        [("task", "answer", "first"), ("task", ERROR, "error 2"), ("task", INTERRUPT, "ask 2")],
        key=repr,
    )
    assert CheckpointWrite.objects.count() == 3


def test_two_special_writes_to_one_channel_in_a_call_keep_the_last(saver):
    config = put(saver, "t")

    saver.put_writes(config, [(INTERRUPT, "a"), (INTERRUPT, "b")], "task")

    assert saver.get_tuple(config).pending_writes == [("task", INTERRUPT, "b")]


def test_pending_writes_come_in_task_path_then_task_id_then_idx_order(saver):
    config = put(saver, "t")
    saver.put_writes(config, [("c", 3), ("c", 4)], "task-b", task_path="~1")
    saver.put_writes(config, [("c", 2)], "task-z", task_path="~0")
    saver.put_writes(config, [("c", 1)], "task-a", task_path="~0")
    saver.put_writes(config, [("c", 0)], "task-y", task_path="")

    assert [v for _, _, v in saver.get_tuple(config).pending_writes] == [0, 1, 2, 3, 4]
    assert [v for _, _, v in next(saver.list(config)).pending_writes] == [0, 1, 2, 3, 4]


def test_putting_a_checkpoint_id_again_replaces_it(saver):
    checkpoint = empty_checkpoint()
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    saver.put(config, checkpoint, {"source": "loop", "step": 1}, {})
    checkpoint["channel_values"] = {"x": "final"}
    saver.put(config, checkpoint, {"source": "loop", "step": 2}, {})

    stored = saver.get_tuple(config)
    assert stored.checkpoint["channel_values"] == {"x": "final"}
    assert stored.metadata["step"] == 2
    assert Checkpoint.objects.count() == 1


def test_list_pages_through_any_number_of_rows_newest_first(saver, monkeypatch):
    monkeypatch.setattr(saver_module, "LIST_PAGE_SIZE", 3)
    parent = None
    for step in range(8):
        parent = put(saver, "source", parent=parent, step=step)
    saver.copy_thread("source", "copy")  # same checkpoint ids on two threads: ties to break

    everything = list(saver.list(None))
    assert len(everything) == 16
    assert {t.config["configurable"]["thread_id"] for t in everything} == {"source", "copy"}
    assert (
        len({(t.config["configurable"]["thread_id"], t.checkpoint["id"]) for t in everything}) == 16
    )
    assert ids(everything) == sorted(ids(everything), reverse=True)
    one_thread = list(saver.list({"configurable": {"thread_id": "copy"}}))
    assert [t.metadata["step"] for t in one_thread] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert len(list(saver.list(None, limit=7))) == 7
    assert list(saver.list(None, limit=0)) == []

    async def alist(**kwargs: Any) -> list:
        return [t async for t in saver.alist(None, **kwargs)]

    assert ids(asyncio.run(alist())) == ids(everything)
    assert ids(asyncio.run(alist(limit=5))) == ids(everything)[:5]


def test_metadata_is_a_json_column_the_filter_queries(saver):
    a = put(saver, "t", source="input", step=-1, user="ann", score=1, flag=True, a__b="x")
    b = put(saver, "t", source="loop", step=0, user=None, score="1", flag=False)
    c = put(saver, "t", source="loop", step=1, nested={"k": "v"})

    def matching(**filter: Any) -> list[str]:
        return sorted(ids(saver.list({"configurable": {"thread_id": "t"}}, filter=filter)))

    def checkpoint_ids(*configs: dict) -> list[str]:
        return sorted(c["configurable"]["checkpoint_id"] for c in configs)

    assert matching(source="loop") == checkpoint_ids(b, c)
    assert matching(source="loop", step=1) == checkpoint_ids(c)
    assert matching(score=1) == checkpoint_ids(a)
    assert matching(score="1") == checkpoint_ids(b)
    assert matching(flag=False) == checkpoint_ids(b)
    assert matching(user=None) == checkpoint_ids(b, c)  # null or absent, as in InMemorySaver
    assert matching(a__b="x") == checkpoint_ids(a)
    assert matching(nested={"k": "v"}) == checkpoint_ids(c)
    assert matching(user="bob") == []
    # Plain ORM queries work on it too (the admin, the runs app).
    assert Checkpoint.objects.filter(metadata__source="input", metadata__user="ann").count() == 1


def test_metadata_json_cannot_hold_is_stored_as_text_instead_of_failing_the_run(saver):
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    config = put(
        saver,
        "t",
        obj=Opaque(),
        nan=float("nan"),
        text="a\x00b",
        nested={"deep": ["c\x00"]},
        pair=(1, 2),
    )

    metadata = saver.get_tuple(config).metadata
    assert metadata["obj"] == "opaque" and metadata["nan"] == "nan"
    assert metadata["text"] == "ab" and metadata["nested"] == {"deep": ["c"]}
    assert metadata["pair"] == [1, 2]


def test_run_id_and_config_metadata_are_recorded_with_the_checkpoint(saver):
    checkpoint = empty_checkpoint()
    config = {
        "configurable": {"thread_id": uuid.UUID(int=7), "checkpoint_ns": "", "user_id": "ann"},
        "metadata": {"run_id": "run-1", "graph_id": "echo"},
    }

    saver.put(config, checkpoint, {"source": "input", "step": -1}, {})

    row = Checkpoint.objects.get()
    assert row.thread_id == str(uuid.UUID(int=7)) and row.run_id == "run-1"
    assert row.metadata == {
        "source": "input",
        "step": -1,
        "run_id": "run-1",
        "graph_id": "echo",
        "user_id": "ann",
    }


def test_delete_for_runs_takes_the_runs_checkpoints_and_their_writes_only(saver):
    kept = put(saver, "t", run_id="run-1")
    gone = put(saver, "t", parent=kept, run_id="run-2")
    child = put(saver, "t", ns="sub:1", run_id="run-2")
    for config in (kept, gone, child):
        saver.put_writes(config, [("ch", "v")], "task")

    saver.delete_for_runs(["run-2", "run-unknown"])

    assert ids(saver.list({"configurable": {"thread_id": "t"}})) == ids([saver.get_tuple(kept)])
    assert saver.get_tuple(kept).pending_writes == [("task", "ch", "v")]
    assert CheckpointWrite.objects.count() == 1


def test_prune_keeps_latest_per_namespace_but_not_past_unsnapshotted_delta_updates(saver):
    parent = None
    for step in range(3):
        parent = put(saver, "plain", parent=parent, step=step)
        saver.put_writes(parent, [("ch", step)], "task")
    latest_plain = parent
    parent = None
    for step in range(3):
        parent = put(
            saver,
            "delta",
            parent=parent,
            step=step,
            counters_since_delta_snapshot={"log": [step, step]},
        )

    saver.prune(["plain", "delta"], strategy="keep_latest")

    assert ids(saver.list({"configurable": {"thread_id": "plain"}})) == [
        latest_plain["configurable"]["checkpoint_id"]
    ]
    assert saver.get_tuple(latest_plain).pending_writes == [("task", "ch", 2)]
    assert CheckpointWrite.objects.count() == 1
    # Its state still needs the writes of its ancestors: nothing dropped.
    assert len(list(saver.list({"configurable": {"thread_id": "delta"}}))) == 3
    with pytest.raises(ValueError, match="Unknown prune strategy 'oldest'"):
        saver.prune(["plain"], strategy="oldest")


def test_channel_versions_increase_as_strings():
    saver = DjangoCheckpointSaver()
    versions = [saver.get_next_version(None, None)]
    for _ in range(11):
        versions.append(saver.get_next_version(versions[-1], None))

    assert versions == sorted(versions) and len(set(versions)) == 12
    assert versions[-1].startswith("0" * 30 + "12.")
    assert saver.get_next_version(41, None).startswith("0" * 30 + "42.")


def test_sync_calls_from_a_short_lived_thread_close_the_connection_they_opened(saver):
    # LangGraph's sync graphs call put/put_writes from pool threads that end with the run.
    config = put(saver, "t")
    seen: dict[str, Any] = {}

    def in_thread() -> None:
        seen["tuple"] = saver.get_tuple(config)
        saver.put_writes(config, [("ch", 1)], "task")
        seen["open after"] = connections["default"].connection is not None

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()

    assert seen["tuple"].checkpoint["id"] == config["configurable"]["checkpoint_id"]
    assert seen["open after"] is False
    assert saver.get_tuple(config).pending_writes == [("task", "ch", 1)]


def test_reads_take_one_or_two_queries_whatever_the_number_of_checkpoints(
    saver, django_assert_num_queries
):
    parent = None
    for step in range(8):
        parent = put(saver, "t", parent=parent, step=step)
        saver.put_writes(parent, [("ch", step), (ERROR, "e")], f"task-{step}")
    config = {"configurable": {"thread_id": "t"}}

    with django_assert_num_queries(2):  # the checkpoints, then all their writes
        listed = list(saver.list(config))
    with django_assert_num_queries(1):  # the checkpoint and its writes in one statement
        latest = saver.get_tuple(config)

    assert [len(t.pending_writes) for t in listed] == [2] * 8
    assert latest.checkpoint["id"] == listed[0].checkpoint["id"]
