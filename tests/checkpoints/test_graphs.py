"""Real LangGraph graphs compiled with DjangoCheckpointSaver: state, history, update_state,
time travel, interrupts and resume, failures, subgraphs, in sync and async code."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from asgiref.sync import async_to_sync
from langgraph.types import Command

from checkpoints.models import Checkpoint
from checkpoints.saver import DjangoCheckpointSaver
from tests.checkpoints.graphs import (
    approval_graph,
    chat_graph,
    delta_log_graph,
    fan_out_graph,
    parent_of_approval_graph,
)


def thread() -> dict:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


def checkpoint_id(config: dict) -> str:
    return config["configurable"]["checkpoint_id"]


# --- sync ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_state_accumulates_across_invocations_of_a_thread(saver, durability):
    graph = chat_graph(saver)
    config = thread()

    graph.invoke({"messages": ["hi"]}, config, durability=durability)
    result = graph.invoke({"messages": ["again"]}, config, durability=durability)

    assert result == {"messages": ["hi", "heard hi", "again", "heard again"], "turns": 2}
    state = chat_graph(DjangoCheckpointSaver()).get_state(config)  # a fresh saver: all in the DB
    assert state.values == result
    assert state.next == ()
    assert state.metadata["source"] == "loop"


def test_history_is_newest_first_and_chained_by_parents(saver):
    graph = chat_graph(saver)
    config = thread()
    graph.invoke({"messages": ["hi"]}, config)
    graph.invoke({"messages": ["again"]}, config)

    history = list(graph.get_state_history(config))

    # Per invocation: the input checkpoint and one per superstep (START, listen, count).
    assert [(s.metadata["step"], s.metadata["source"], s.next) for s in history] == [
        (6, "loop", ()),
        (5, "loop", ("count",)),
        (4, "loop", ("listen",)),
        (3, "input", ("__start__",)),
        (2, "loop", ()),
        (1, "loop", ("count",)),
        (0, "loop", ("listen",)),
        (-1, "input", ("__start__",)),
    ]
    ids = [checkpoint_id(s.config) for s in history]
    assert ids == sorted(ids, reverse=True)
    for newer, older in itertools.pairwise(history):
        assert checkpoint_id(newer.parent_config) == checkpoint_id(older.config)
    assert history[-1].parent_config is None
    assert history[0].values == graph.get_state(config).values
    assert history[3].values == {"messages": ["hi", "heard hi"], "turns": 1}
    assert history[-1].values == {"messages": []}

    assert len(list(graph.get_state_history(config, limit=3))) == 3
    before = list(graph.get_state_history(config, before=history[5].config))
    assert [checkpoint_id(s.config) for s in before] == ids[6:]
    inputs = list(graph.get_state_history(config, filter={"source": "input"}))
    assert [s.metadata["step"] for s in inputs] == [3, -1]


def test_update_state_adds_a_checkpoint_the_next_run_builds_on(saver):
    graph = chat_graph(saver)
    config = thread()
    graph.invoke({"messages": ["hi"]}, config)

    updated = graph.update_state(config, {"messages": ["edited by a human"]}, as_node="count")

    state = graph.get_state(config)
    assert checkpoint_id(state.config) == checkpoint_id(updated)
    assert state.metadata["source"] == "update"
    assert state.values["messages"] == ["hi", "heard hi", "edited by a human"]
    result = graph.invoke({"messages": ["next"]}, config)
    assert result["messages"][-3:] == ["edited by a human", "next", "heard next"]
    assert result["turns"] == 2


def test_time_travel_forks_from_a_past_checkpoint(saver):
    graph = chat_graph(saver)
    config = thread()
    graph.invoke({"messages": ["first"]}, config)
    after_first = graph.get_state(config)
    graph.invoke({"messages": ["second"]}, config)

    fork = graph.update_state(after_first.config, {"messages": ["instead"]}, as_node="count")
    result = graph.invoke({"messages": ["third"]}, fork)

    assert result == {
        "messages": ["first", "heard first", "instead", "third", "heard third"],
        "turns": 2,
    }
    assert graph.get_state(config).values == result
    # The abandoned branch is still there, addressable by its checkpoint id.
    old_branch = [
        s for s in graph.get_state_history(config) if "heard second" in s.values.get("messages", [])
    ]
    assert old_branch and old_branch[0].values["turns"] == 2
    assert graph.get_state(old_branch[0].config).values == old_branch[0].values


def test_interrupt_then_resume_from_another_saver_instance(saver):
    config = thread()

    first = approval_graph(saver).invoke({"request": "deploy"}, config)

    assert [i.value for i in first["__interrupt__"]] == [
        {"question": "approve?", "request": "deploy"}
    ]
    paused = approval_graph(saver).get_state(config)
    assert paused.next == ("ask",)
    assert [i.value for i in paused.interrupts] == [{"question": "approve?", "request": "deploy"}]
    assert [i.value for i in paused.tasks[0].interrupts] == [
        {"question": "approve?", "request": "deploy"}
    ]

    # Like a resume handled by another worker process: nothing shared but the database.
    resumed = approval_graph(DjangoCheckpointSaver()).invoke(Command(resume="yes"), config)

    assert resumed == {"request": "deploy", "approved": "yes"}
    done = approval_graph(saver).get_state(config)
    assert done.next == () and done.interrupts == ()
    assert done.values == {"request": "deploy", "approved": "yes"}


def test_interrupt_inside_a_subgraph_is_visible_and_resumable(saver):
    graph = parent_of_approval_graph(saver)
    config = thread()

    graph.invoke({"request": "merge"}, config)

    state = graph.get_state(config, subgraphs=True)
    assert state.next == ("review",)
    child = state.tasks[0].state
    assert child.next == ("ask",)
    assert child.config["configurable"]["checkpoint_ns"].startswith("review:")
    assert [i.value for i in state.interrupts] == [{"question": "approve?", "request": "merge"}]
    assert (
        Checkpoint.objects.filter(thread_id=config["configurable"]["thread_id"])
        .exclude(checkpoint_ns="")
        .exists()
    )

    assert graph.invoke(Command(resume="ok"), config) == {"request": "merge", "approved": "ok"}
    assert graph.get_state(config).next == ()


def test_a_failed_task_is_retried_without_rerunning_the_tasks_that_succeeded(saver):
    calls: dict[str, int] = {}
    graph = fan_out_graph(saver, calls=calls, failures=1)
    config = thread()

    with pytest.raises(RuntimeError, match="flaky failed"):
        graph.invoke({"done": []}, config)

    failed = graph.get_state(config)
    assert {t.name: t.error is not None for t in failed.tasks} == {"steady": False, "flaky": True}
    result = graph.invoke(None, config)
    assert sorted(result["done"]) == ["flaky", "steady"]
    assert calls == {"steady": 1, "flaky": 2}


def test_delta_channel_state_is_rebuilt_from_stored_writes(saver):
    graph = delta_log_graph(saver)
    config = thread()

    for _ in range(7):
        graph.invoke({"log": []}, config)

    expected = [f"entry {i}" for i in range(7)]
    assert delta_log_graph(DjangoCheckpointSaver()).get_state(config).values == {"log": expected}
    finals = [s for s in graph.get_state_history(config) if s.next == ()]
    assert [len(s.values["log"]) for s in finals] == [7, 6, 5, 4, 3, 2, 1]
    # Most checkpoints really hold no value for the channel: those states came from writes.
    stored = [t.checkpoint["channel_values"] for t in saver.list(config)]
    assert 0 < sum("log" in values for values in stored) < len(stored) // 2


# --- async ---------------------------------------------------------------------------------------


def test_async_graph_in_an_event_loop_with_state_history_update_and_resume(saver):
    # asyncio.run as in a worker: Django would raise SynchronousOnlyOperation if the saver
    # touched the ORM on the loop's thread.
    async def scenario() -> None:
        chat = chat_graph(saver)
        config = thread()
        await chat.ainvoke({"messages": ["hi"]}, config)
        result = await chat.ainvoke({"messages": ["again"]}, config)
        assert result == {"messages": ["hi", "heard hi", "again", "heard again"], "turns": 2}
        assert (await chat.aget_state(config)).values == result
        history = [s async for s in chat.aget_state_history(config)]
        assert len(history) == 8
        assert len([s async for s in chat.aget_state_history(config, limit=2)]) == 2
        await chat.aupdate_state(config, {"messages": ["edited"]}, as_node="count")
        assert (await chat.aget_state(config)).values["messages"][-1] == "edited"

        approval = approval_graph(saver)
        config = thread()
        first = await approval.ainvoke({"request": "ship"}, config)
        assert first["__interrupt__"][0].value == {"question": "approve?", "request": "ship"}
        assert (await approval.aget_state(config)).next == ("ask",)
        assert await approval.ainvoke(Command(resume=True), config) == {
            "request": "ship",
            "approved": True,
        }

    asyncio.run(scenario())


def test_async_streaming_and_concurrent_threads_in_one_loop(saver):
    async def one_thread(n: int) -> dict:
        graph = chat_graph(saver)
        config = thread()
        chunks = [
            c async for c in graph.astream({"messages": [f"m{n}"]}, config, stream_mode="updates")
        ]
        assert [list(c) for c in chunks] == [["listen"], ["count"]]
        await graph.ainvoke({"messages": [f"n{n}"]}, config)
        return (await graph.aget_state(config)).values

    async def scenario() -> list[dict]:
        return await asyncio.gather(*(one_thread(n) for n in range(6)))

    results = asyncio.run(scenario())

    assert results == [
        {"messages": [f"m{n}", f"heard m{n}", f"n{n}", f"heard n{n}"], "turns": 2} for n in range(6)
    ]


def test_async_graph_run_through_async_to_sync_like_a_sync_worker_task(saver):
    config = thread()
    first = async_to_sync(approval_graph(saver).ainvoke)({"request": "pay"}, config)
    assert first["__interrupt__"][0].value["request"] == "pay"

    resumed = async_to_sync(approval_graph(saver).ainvoke)(Command(resume="no"), config)

    assert resumed == {"request": "pay", "approved": "no"}
    # Sync and async methods read the same rows.
    assert approval_graph(saver).get_state(config).values == resumed


def test_async_view_runs_a_graph_and_reads_its_state(saver, settings):
    from django.test import AsyncClient

    settings.ROOT_URLCONF = "tests.checkpoints.urls"
    thread_id = str(uuid.uuid4())

    async def scenario() -> tuple[dict, dict]:
        client = AsyncClient()
        first = await client.post(
            f"/chat/{thread_id}", {"message": "hello"}, content_type="application/json"
        )
        second = await client.post(
            f"/chat/{thread_id}", {"message": "bye"}, content_type="application/json"
        )
        assert first.status_code == second.status_code == 200
        return first.json(), second.json()

    first, second = asyncio.run(scenario())

    assert first == {"messages": ["hello", "heard hello"], "turns": 1, "history": 4}
    assert second == {
        "messages": ["hello", "heard hello", "bye", "heard bye"],
        "turns": 2,
        "history": 8,
    }
