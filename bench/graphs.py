"""Graphs only the benchmark registers (through `bench/langgraph.json`, as a user project would)."""

from __future__ import annotations

import asyncio

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class BurstState(TypedDict, total=False):
    count: int
    sent: int


async def _burst(state: BurstState) -> dict:
    """Writes ``count`` small ``custom`` events, yielding to the loop every few, as a node that
    streams tokens from a model does, so the run streams while the node still runs."""
    write = get_stream_writer()
    count = int(state.get("count") or 1000)
    for i in range(count):
        write({"i": i})
        if i % 20 == 19:
            await asyncio.sleep(0)
    return {"sent": count}


_builder = StateGraph(BurstState)
_builder.add_node("burst", _burst)
_builder.add_edge(START, "burst")
_builder.add_edge("burst", END)
burst = _builder.compile()
