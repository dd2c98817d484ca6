"""Small real LangGraph graphs the saver tests compile with a DjangoCheckpointSaver."""

from __future__ import annotations

import operator
import threading
from typing import Annotated, Any

from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict


class ChatState(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    turns: int


def chat_graph(saver: BaseCheckpointSaver) -> CompiledStateGraph:
    """START -> listen -> count -> END: one reply and one turn per input message."""

    def listen(state: ChatState) -> dict:
        return {"messages": [f"heard {state['messages'][-1]}"]}

    def count(state: ChatState) -> dict:
        return {"turns": state.get("turns", 0) + 1}

    builder = StateGraph(ChatState)
    builder.add_node("listen", listen)
    builder.add_node("count", count)
    builder.add_edge(START, "listen")
    builder.add_edge("listen", "count")
    builder.add_edge("count", END)
    return builder.compile(checkpointer=saver)


class ApprovalState(TypedDict, total=False):
    request: str
    approved: Any


def approval_builder() -> StateGraph:
    """One node that asks a human through interrupt() and stores the answer."""

    def ask(state: ApprovalState) -> dict:
        answer = interrupt({"question": "approve?", "request": state["request"]})
        return {"approved": answer}

    builder = StateGraph(ApprovalState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder


def approval_graph(saver: BaseCheckpointSaver) -> CompiledStateGraph:
    return approval_builder().compile(checkpointer=saver)


def parent_of_approval_graph(saver: BaseCheckpointSaver) -> CompiledStateGraph:
    """The approval graph as a subgraph node: its checkpoints live in a child namespace."""
    builder = StateGraph(ApprovalState)
    builder.add_node("review", approval_builder().compile())
    builder.add_edge(START, "review")
    builder.add_edge("review", END)
    return builder.compile(checkpointer=saver)


class FanOutState(TypedDict, total=False):
    done: Annotated[list, operator.add]


def fan_out_graph(
    saver: BaseCheckpointSaver, *, calls: dict[str, int], failures: int
) -> CompiledStateGraph:
    """Two parallel nodes; ``flaky`` raises for its first ``failures`` calls, once ``steady`` has
    succeeded. ``calls`` counts runs."""
    steady_done = threading.Event()

    def steady(state: FanOutState) -> dict:
        calls["steady"] = calls.get("steady", 0) + 1
        steady_done.set()
        return {"done": ["steady"]}

    def flaky(state: FanOutState) -> dict:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] <= failures:
            # A failure before steady's end stops the step before steady's writes are saved (on a
            # loaded machine, one time in a few): then steady runs again, rightly. The case here is
            # the failure of a task beside one that succeeded.
            steady_done.wait(10)
            raise RuntimeError("flaky failed")
        return {"done": ["flaky"]}

    builder = StateGraph(FanOutState)
    builder.add_node("steady", steady)
    builder.add_node("flaky", flaky)
    builder.add_edge(START, "steady")
    builder.add_edge(START, "flaky")
    builder.add_edge("steady", END)
    builder.add_edge("flaky", END)
    return builder.compile(checkpointer=saver)


def _extend(state: list, writes: list[list]) -> list:
    return state + [item for write in writes for item in write]


class LogState(TypedDict, total=False):
    log: Annotated[list, DeltaChannel(_extend, snapshot_frequency=3)]


def delta_log_graph(saver: BaseCheckpointSaver) -> CompiledStateGraph:
    """A DeltaChannel state: checkpoints hold a snapshot only every third update; the rest is
    rebuilt from the writes stored between them."""

    def add(state: LogState) -> dict:
        return {"log": [f"entry {len(state.get('log', []))}"]}

    builder = StateGraph(LogState)
    builder.add_node("add", add)
    builder.add_edge(START, "add")
    builder.add_edge("add", END)
    return builder.compile(checkpointer=saver)
