"""The graph registry: settings, langgraph.json files, system assistants."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from runs.graphs import (
    GraphLoadError,
    graph_get,
    graph_ids,
    system_assistant_id,
    system_assistants_ensure,
)
from runs.models import Assistant

GRAPH_FILE = '''
from typing_extensions import TypedDict
from langgraph.graph import StateGraph, START, END

class State(TypedDict):
    n: int

def bump(state: State) -> dict:
    return {"n": state["n"] + 1}

builder = StateGraph(State)
builder.add_node("bump", bump)
builder.add_edge(START, "bump")
builder.add_edge("bump", END)
graph = builder.compile()
uncompiled = builder
'''


def test_system_assistant_ids_match_the_real_server() -> None:
    assert system_assistant_id("echo") == uuid.UUID("046b5dc7-2108-582c-9c6c-31d556d138f0")


def test_default_graphs_are_the_demo_graphs() -> None:
    assert graph_ids() == ["echo", "hitl", "steps", "chat", "nested"]
    assert set(graph_get("steps").get_graph().nodes) >= {"plan", "research", "draft", "review"}


def test_langgraph_json_file_registers_graphs_relative_to_it(tmp_path: Path, monkeypatch, db) -> None:
    (tmp_path / "agent.py").write_text(GRAPH_FILE)
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({"graphs": {"counter": "./agent.py:graph", "raw": "./agent.py:uncompiled"}}))
    monkeypatch.setenv("LANGGRAPH_CONFIG", str(config))
    assert graph_ids() == ["echo", "hitl", "steps", "chat", "nested", "counter", "raw"]
    assert graph_get("counter").invoke({"n": 1}) == {"n": 2}
    assert graph_get("raw").invoke({"n": 5}) == {"n": 6}  # a StateGraph is compiled for us
    system_assistants_ensure()
    counter = Assistant.objects.get(pk=system_assistant_id("counter"))
    assert (counter.name, counter.owner, counter.metadata) == ("counter", None, {"created_by": "system"})
    assert counter.versions.count() == 1
    system_assistants_ensure()  # idempotent
    assert Assistant.objects.filter(graph_id="counter").count() == 1


def test_runs_graphs_setting_and_bad_specs(settings) -> None:
    settings.RUNS_GRAPHS = {"only": "runs.demo_graphs:echo", "broken": "runs.demo_graphs:missing"}
    assert graph_ids() == ["only", "broken"]
    assert graph_get("only") is not None
    with pytest.raises(GraphLoadError):
        graph_get("broken")
