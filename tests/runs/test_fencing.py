"""Fencing of a graph run's worker, in one process: a worker whose run recovery ended (it froze
past the heartbeat timeout) finds every write refused when it goes on: its heartbeat, its
events, its checkpoints, its end and its thread's update. It stops with ``superseded`` and the
run keeps the one end recovery gave it. The real-process version (SIGSTOP / SIGCONT) is
tests/faults/test_frozen_worker.py."""

from __future__ import annotations

import asyncio
import operator
from datetime import timedelta
from typing import Annotated, Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.utils import timezone
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from checkpoints.models import Checkpoint
from checkpoints.sql import FenceClosed
from runs import recovery, services, tasks
from runs.models import Run, RunEvent, RunStatus, Thread

pytestmark = pytest.mark.django_db(transaction=True)


class LogState(TypedDict, total=False):
    log: Annotated[list, operator.add]


# What the graph below saw when it had its own run reaped: (checkpoints of the run, events of
# the run, the thread's row).
seen_at_reap: list[tuple[int, list, dict]] = []


def thread_row(thread_id: Any) -> dict:
    return Thread.objects.filter(pk=thread_id).values().get()


def run_events(run_id: Any) -> list[tuple[int, str]]:
    return list(RunEvent.objects.filter(run_id=run_id).order_by("seq").values_list("seq", "event"))


def reap_running_run() -> None:
    """What recovery does to the run of a worker frozen past the heartbeat timeout."""
    run = Run.objects.get(status=RunStatus.RUNNING)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=2))
    assert recovery.runs_reap_stale(heartbeat_timeout=30) == 1
    seen_at_reap.append(
        (Checkpoint.objects.filter(run_id=str(run.pk)).count(), run_events(run.pk), thread_row(run.thread_id))
    )


async def _first(state: LogState) -> dict:
    return {"log": ["first"]}


async def _frozen(state: LogState) -> dict:
    # The worker "froze" here: recovery ended its run. It goes on as if nothing happened.
    await sync_to_async(reap_running_run)()
    return {"log": ["after the freeze"]}


async def _more(state: LogState) -> dict:
    return {"log": ["more"]}


_builder = StateGraph(LogState)
_builder.add_node("first", _first)
_builder.add_node("frozen", _frozen)
_builder.add_node("more", _more)
_builder.add_edge(START, "first")
_builder.add_edge("first", "frozen")
_builder.add_edge("frozen", "more")
_builder.add_edge("more", END)
reaped_midway = _builder.compile()


@pytest.fixture
def thread(alice):
    yield services.thread_create(owner=alice)
    # The worker's async database calls ran in asgiref's shared thread: close its connection.
    asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture
def graphs(settings):
    settings.RUNS_GRAPHS = {**settings.RUNS_GRAPHS, "reaped_midway": "tests.runs.test_fencing:reaped_midway"}
    seen_at_reap.clear()


def create(owner, thread, graph: str = "echo", **body) -> Run:
    return services.run_create(owner=owner, body={"assistant_id": graph, **body}, thread_id=thread.pk)


def claimed_and_reaped(alice, thread) -> tuple[Run, tasks.RunDriver]:
    run = create(alice, thread, input={"messages": [{"role": "user", "content": "hi"}]})
    claimed = tasks.claim_run(run.pk)
    assert claimed is not None
    driver = tasks.RunDriver(claimed)
    driver.prepare()
    reap_running_run()
    return claimed, driver


def test_a_reaped_runs_worker_can_beat_nothing_and_sees_it_was_superseded(alice, thread, graphs):
    run, driver = claimed_and_reaped(alice, thread)
    before = Run.objects.filter(pk=run.pk).values().get()

    row = driver._poll(True)

    assert Run.objects.filter(pk=run.pk).values().get() == before
    assert row[0] == RunStatus.ERROR
    assert asyncio.run(driver._why_fenced_out()) == tasks.SUPERSEDED


def test_a_reaped_runs_worker_stores_no_event_and_no_checkpoint(alice, thread, graphs):
    run, driver = claimed_and_reaped(alice, thread)
    events_before = run_events(run.pk)
    config = {"configurable": {"thread_id": str(thread.pk), "checkpoint_ns": ""}}
    checkpoints_before = Checkpoint.objects.filter(thread_id=str(thread.pk)).count()

    with pytest.raises(FenceClosed), connection.cursor():
        driver.writes._store([(run.pk, 99, "values", '{"late": true}', False, timezone.now())])
    with pytest.raises(FenceClosed):
        driver.saver.put(config, empty_checkpoint(), {"source": "loop", "step": 9, "run_id": str(run.pk)}, {})

    assert run_events(run.pk) == events_before
    assert Checkpoint.objects.filter(thread_id=str(thread.pk)).count() == checkpoints_before


def test_a_reaped_runs_end_records_nothing_and_leaves_the_thread_alone(alice, thread, graphs):
    run, _driver = claimed_and_reaped(alice, thread)
    follower = create(alice, thread, input={"messages": [{"role": "user", "content": "next"}]})
    run_before = Run.objects.filter(pk=run.pk).values().get()
    events_before = run_events(run.pk)
    thread_before = thread_row(thread.pk)

    state = {"values": {"messages": ["from the stale worker"]}, "next": [], "tasks": [], "checkpoint": None,
             "metadata": {}, "created_at": None, "parent_checkpoint": None, "interrupts": []}
    tasks.finish(run, tasks.Outcome(RunStatus.SUCCESS, result={"stale": True}, state=state))

    assert Run.objects.filter(pk=run.pk).values().get() == run_before
    assert run_events(run.pk) == events_before
    assert thread_row(thread.pk) == thread_before
    # The thread is the next run's, which runs as usual.
    assert tasks.run_execute(str(follower.pk)) == RunStatus.SUCCESS


def test_a_worker_superseded_mid_graph_stops_and_writes_nothing_more(alice, thread, graphs):
    run = create(alice, thread, "reaped_midway", input={"log": []})

    assert tasks.run_execute(str(run.pk)) == tasks.SUPERSEDED

    [(checkpoints_at_reap, events_at_reap, thread_at_reap)] = seen_at_reap
    ended = Run.objects.get(pk=run.pk)
    assert ended.status == RunStatus.ERROR and ended.error["error"] == "WorkerLost"
    # Nothing of the worker's landed after the reap: no checkpoint (not "after the freeze", not
    # "more"), no event after the reaper's run_done, no change to the thread.
    assert Checkpoint.objects.filter(run_id=str(run.pk)).count() == checkpoints_at_reap
    assert run_events(run.pk) == events_at_reap and events_at_reap[-1][1] == "metadata"
    assert thread_row(thread.pk) == thread_at_reap
    state = services.thread_state(thread=Thread.objects.get(pk=thread.pk))
    assert "after the freeze" not in state["values"].get("log", [])
