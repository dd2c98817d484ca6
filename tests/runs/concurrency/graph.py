"""A test graph whose one node waits, fails or blocks as its input says, for the concurrency tests.

``naps``: input ``{"label": str, "how": "await" | "sync" | "raise" | "block", "seconds": float}``.
``await`` waits on the event loop (a model API call), ``sync`` sleeps in a sync node (the loop's
executor), ``raise`` fails, ``block`` sleeps *inside* an async node, holding the loop. The node
appends ``"<label> done"`` to ``log``: each run's checkpoints and values say whose they are.
"""

from __future__ import annotations

import asyncio
import operator
import time
from typing import Annotated

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class NapState(TypedDict, total=False):
    log: Annotated[list, operator.add]
    label: str
    how: str
    seconds: float


async def _nap(state: NapState) -> dict:
    how, seconds = state.get("how", "await"), float(state.get("seconds", 0))
    if how == "raise":
        raise RuntimeError(f"{state.get('label')} failed on purpose")
    if how == "block":
        time.sleep(seconds)  # sync work in an async node: the whole loop waits
    else:
        await asyncio.sleep(seconds)
    return {"log": [f"{state.get('label')} done"]}


def _sync_nap(state: NapState) -> dict:
    time.sleep(float(state.get("seconds", 0)))
    return {"log": [f"{state.get('label')} done"]}


async def _route(state: NapState) -> str:
    return "sync_nap" if state.get("how") == "sync" else "nap"


_builder = StateGraph(NapState)
_builder.add_node("nap", _nap)
_builder.add_node("sync_nap", _sync_nap)
_builder.add_conditional_edges(START, _route, ["nap", "sync_nap"])
_builder.add_edge("nap", END)
_builder.add_edge("sync_nap", END)
naps = _builder.compile()
