"""A graph with long-term memory, for the store tests: ``remember`` writes the input's fact
through its ``store`` parameter, ``recall`` lists every fact through ``get_store()``."""

from __future__ import annotations

import uuid
from typing import TypedDict

from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore


class State(TypedDict, total=False):
    fact: str
    recalled: list[str]


def remember(state: State, *, store: BaseStore) -> State:
    if state.get("fact"):
        store.put(("memories",), uuid.uuid4().hex, {"fact": state["fact"]})
    return {}


async def recall(state: State) -> State:
    items = await get_store().asearch(("memories",), limit=100)
    return {"recalled": sorted(item.value["fact"] for item in items)}


builder = StateGraph(State)
builder.add_node("remember", remember)
builder.add_node("recall", recall)
builder.add_edge(START, "remember")
builder.add_edge("remember", "recall")
builder.add_edge("recall", END)
graph = builder.compile()
