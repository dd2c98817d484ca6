"""Semantic search of the store: the ``store.index`` of ``langgraph.json`` (``dims``, ``embed``,
``fields``), the vectors of an item, and cosine similarity.

Vectors are stored with each item (one per indexed text) and a ``query`` is ranked here, in
Python, by the best cosine similarity of an item's vectors: a scan of the searched namespace
prefix, fine for stores of thousands of items per user (pgvector is not used).
``embed`` is a function ``(texts: list[str]) -> list[list[float]]`` named as ``"./file.py:name"``
(relative to the config file) or ``"module:name"``, or a LangChain ``Embeddings``; langgraph
wraps it (``ensure_embeddings``), so only a process that has an index imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class InvalidIndexConfig(ValueError):
    pass


@dataclass(frozen=True)
class StoreIndex:
    dims: int
    embed_documents: Callable[[list[str]], list[list[float]]]
    embed_query: Callable[[str], list[float]]
    fields: tuple[str, ...] = ("$",)


def _embed_target(spec: str, base_dir: Path) -> Any:
    """The function or object ``spec`` names; a ``provider:model`` string stays a string, for
    LangChain's ``init_embeddings`` (which langgraph's wrapper calls)."""
    module_part, sep, attr = spec.rpartition(":")
    if sep and (module_part.endswith(".py") or module_part.startswith(".") or "/" in module_part):
        path = (base_dir / module_part).resolve()
        module_spec = importlib.util.spec_from_file_location(f"store_embed_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise InvalidIndexConfig(f"store.index.embed: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except OSError as exc:
            raise InvalidIndexConfig(f"store.index.embed: cannot load {path}: {exc}") from exc
        if not hasattr(module, attr):
            raise InvalidIndexConfig(f"store.index.embed: {path} has no {attr!r}")
        return getattr(module, attr)
    if sep and attr.isidentifier():
        try:
            return getattr(importlib.import_module(module_part), attr)
        except (ImportError, AttributeError):
            pass
    return spec


def store_index_from_config(config: Any, *, base_dir: Path) -> StoreIndex:
    """The index ``config`` (``langgraph.json``'s ``store.index``) describes."""
    if not isinstance(config, dict):
        raise InvalidIndexConfig("store.index must be an object with dims and embed")
    dims = config.get("dims")
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise InvalidIndexConfig("store.index.dims must be a positive integer")
    embed = config.get("embed")
    if not isinstance(embed, str):
        raise InvalidIndexConfig("store.index.embed must name an embedding function")
    fields = config.get("fields") or ["$"]
    if not isinstance(fields, list) or not all(isinstance(path, str) for path in fields):
        raise InvalidIndexConfig("store.index.fields must be a list of field paths")
    from langgraph.store.base.embed import ensure_embeddings

    embeddings = ensure_embeddings(_embed_target(embed, base_dir))
    return StoreIndex(dims, embeddings.embed_documents, embeddings.embed_query, tuple(fields))


def item_texts(value: dict[str, Any], fields: Sequence[str]) -> list[str]:
    """The texts of ``value`` at the field paths (``$``: the whole value as JSON)."""
    from langgraph.store.base.embed import get_text_at_path

    texts: list[str] = []
    for path in fields:
        texts.extend(text for text in get_text_at_path(value, path) if text)
    return texts


def item_vectors(index: StoreIndex, value: dict[str, Any], fields: Sequence[str] | None) -> list[list[float]]:
    texts = item_texts(value, fields if fields is not None else index.fields)
    if not texts:
        return []
    vectors = index.embed_documents(texts)
    for vector in vectors:
        if len(vector) != index.dims:
            raise InvalidIndexConfig(f"the embedding function answered {len(vector)} dimensions, not {index.dims}")
    return [[float(x) for x in vector] for vector in vectors]


def cosine(left: Sequence[float], right: Sequence[float]) -> float:
    dot = sum(a * b for a, b in zip(left, right, strict=True))
    norms = math.sqrt(sum(a * a for a in left)) * math.sqrt(sum(b * b for b in right))
    # Clamped: rounding can put identical directions a hair above 1.
    return max(-1.0, min(1.0, dot / norms)) if norms else 0.0
