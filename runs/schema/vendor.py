"""Refresh ``langgraph_paths.json`` from the LangGraph Agent Server's OpenAPI document.

    python runs/schema/vendor.py path/to/langgraph-openapi.json

Keeps the operations of the API families we implement (assistants, threads, thread state, runs,
streams, system) and the component schemas they reference that ``langgraph_api.json`` lacks.
The file is the interface contract, copied verbatim; ``runs.openapi`` adapts it to what we
answer when it builds our schema.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "langgraph_paths.json"
COMPONENTS = HERE / "langgraph_api.json"

# Families of the real server we do not implement.
NOT_OURS = re.compile(
    r"^/(a2a|mcp|metrics|docs)\b|^/threads/\{thread_id\}/(storage|commands|stream/events)$"
)
METHODS = {"get", "post", "put", "patch", "delete"}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node)) if node else set()
    return set()


def vendor(spec: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    paths = {
        path: {method: op for method, op in item.items() if method in METHODS}
        for path, item in spec["paths"].items()
        if not NOT_OURS.search(path)
    }
    schemas = spec["components"]["schemas"]
    needed: set[str] = set()
    pending = _refs(paths)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        pending |= _refs(schemas[name])
    extra = {name: schemas[name] for name in sorted(needed) if name not in known}
    return {
        "info": {"source": spec["info"], "openapi": spec["openapi"]},
        "paths": paths,
        "components": {"schemas": extra},
    }


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    known = json.loads(COMPONENTS.read_text())["components"]["schemas"]
    OUTPUT.write_text(json.dumps(vendor(spec, known), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv)
