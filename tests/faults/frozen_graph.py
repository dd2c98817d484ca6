"""A test graph that names its worker process in every step, for the frozen-worker test.

``pid_steps`` runs ``steps`` steps (one node, looping), each a blocking sleep of ``step_seconds``
(a worker frozen in the middle of it wakes up and goes on with the step before its run's watcher
looks at anything), then appends ``"<pid> step <n>"`` to the state's ``log``: every checkpoint
and values event says which worker wrote it. ``langgraph.json`` beside this file serves it.
"""

from __future__ import annotations

import operator
import os
import time
from typing import Annotated

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class PidStepsState(TypedDict, total=False):
    log: Annotated[list, operator.add]
    steps: int
    step_seconds: float
    done: int


def _step(state: PidStepsState) -> dict:
    time.sleep(float(state.get("step_seconds", 0.5)))
    done = int(state.get("done", 0)) + 1
    return {"log": [f"{os.getpid()} step {done}"], "done": done}


def _more(state: PidStepsState) -> str:
    return "step" if int(state.get("done", 0)) < int(state.get("steps", 1)) else END


_builder = StateGraph(PidStepsState)
_builder.add_node("step", _step)
_builder.add_edge(START, "step")
_builder.add_conditional_edges("step", _more, ["step", END])
pid_steps = _builder.compile()
