"""Graph registry: which LangGraph graphs this server runs, and their system assistants.

Graphs come from ``settings.RUNS_GRAPHS`` (``{"id": "module:attr" | "./path.py:attr"}``, the
shipped demo graphs by default) and from a ``langgraph.json``-style file named by the
``LANGGRAPH_CONFIG`` environment variable (``{"graphs": {...}}``, paths relative to the file), so
an existing LangGraph project runs unchanged. The file's entries win over the setting's.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
import threading
import uuid
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction

if TYPE_CHECKING:
    # langgraph takes a second to import: a process imports it when it loads a graph (_load),
    # not because it imported this module (every command and the admin do, for graph_ids).
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.pregel import Pregel
    from langgraph.store.base import BaseStore

    from store.index import StoreIndex

# The real server derives system assistant ids from this namespace; clients may hard-code them.
SYSTEM_ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")

DEFAULT_GRAPHS = {
    "echo": "runs.demo_graphs:echo",
    "hitl": "runs.demo_graphs:hitl",
    "steps": "runs.demo_graphs:steps",
    "chat": "runs.demo_graphs:chat",
    "nested": "runs.demo_graphs:nested",
}


class GraphNotFound(LookupError):
    pass


class GraphLoadError(RuntimeError):
    pass


def _config_file_graphs() -> dict[str, str]:
    """The file's graphs; the same dict while the file is unchanged, so callers must not alter it."""
    path = os.environ.get("LANGGRAPH_CONFIG") or getattr(settings, "RUNS_LANGGRAPH_CONFIG", "")
    if not path:
        return {}
    # Resolved only when the file is read: realpath is a system call per path component, and
    # stat follows a symlink anyway (another target is another inode, so it is read again).
    config_path = os.path.expanduser(path)
    try:
        stat = os.stat(config_path)
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        signature = None  # unreadable: _parse_config_file says why, and caches nothing
    return _parse_config_file(config_path, signature)


# Every run create asks for the graph ids: reading and parsing the file each time was a visible
# share of the server's CPU per run. A changed file (mtime, size or inode) is read again.
@lru_cache(maxsize=8)
def _parse_config_file(path: str, signature: tuple[int, int, int] | None) -> dict[str, str]:
    config_path = Path(os.path.realpath(path))
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise GraphLoadError(f"Cannot read LANGGRAPH_CONFIG {config_path}: {exc}") from exc
    graphs = data.get("graphs") or {}
    resolved = {}
    for graph_id, spec in graphs.items():
        if isinstance(spec, dict):  # the long form {"path": "...", "description": ...}
            spec = spec.get("path", "")
        file_part, sep, attr = str(spec).rpartition(":")
        if sep and (file_part.startswith(".") or file_part.endswith(".py") or "/" in file_part):
            file_part = str((config_path.parent / file_part).resolve())
            spec = f"{file_part}:{attr}"
        resolved[graph_id] = spec
    return resolved


def webhook_url_config() -> dict[str, Any]:
    """The file's ``webhooks.url`` settings (``disable_loopback``, ``require_https``), {} without
    a file or the key."""
    path = os.environ.get("LANGGRAPH_CONFIG") or getattr(settings, "RUNS_LANGGRAPH_CONFIG", "")
    if not path:
        return {}
    config_path = os.path.expanduser(path)
    try:
        stat = os.stat(config_path)
    except OSError:
        return {}
    return _parse_webhook_url_config(config_path, (stat.st_mtime_ns, stat.st_size, stat.st_ino))


@lru_cache(maxsize=8)
def _parse_webhook_url_config(path: str, signature: tuple[int, int, int]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    url = (data.get("webhooks") or {}).get("url") if isinstance(data, dict) else None
    return dict(url) if isinstance(url, dict) else {}


def store_index() -> StoreIndex | None:
    """The store's semantic index from the file's ``store.index``, None without one. A broken
    configuration raises ``InvalidIndexConfig``, naming the problem."""
    path = os.environ.get("LANGGRAPH_CONFIG") or getattr(settings, "RUNS_LANGGRAPH_CONFIG", "")
    if not path:
        return None
    config_path = os.path.expanduser(path)
    try:
        stat = os.stat(config_path)
    except OSError:
        return None
    return _parse_store_index(config_path, (stat.st_mtime_ns, stat.st_size, stat.st_ino))


@lru_cache(maxsize=8)
def _parse_store_index(path: str, signature: tuple[int, int, int]) -> StoreIndex | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    config = (data.get("store") or {}).get("index") if isinstance(data, dict) else None
    if config is None:
        return None
    from store.index import store_index_from_config

    return store_index_from_config(config, base_dir=Path(os.path.realpath(path)).parent)


def graph_specs() -> dict[str, str]:
    """Graph id -> import spec, in registration order."""
    specs = dict(getattr(settings, "RUNS_GRAPHS", None) or DEFAULT_GRAPHS)
    specs.update(_config_file_graphs())
    return specs


def graph_ids() -> list[str]:
    return list(graph_specs())


def _import_attr(spec: str) -> Any:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise GraphLoadError(f"Graph spec {spec!r} must look like 'module:attr' or './file.py:attr'.")
    if target.endswith(".py") or os.sep in target:
        path = Path(target)
        module_name = f"langgraph_user_graph_{abs(hash(str(path)))}"
        module = sys.modules.get(module_name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(module_name, path)
            if file_spec is None or file_spec.loader is None:
                raise GraphLoadError(f"Cannot load graph file {path}.")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[module_name] = module
            file_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise GraphLoadError(f"{target} has no attribute {attr!r}.") from None


_load_lock = threading.Lock()


@cache
def _load(graph_id: str, spec: str) -> Pregel:
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    with _load_lock:
        value = _import_attr(spec)
    if isinstance(value, StateGraph):
        value = value.compile()
    elif not isinstance(value, Pregel) and callable(value):
        # A factory, as langgraph.json allows; called once with no config.
        params = inspect.signature(value).parameters
        value = value({}) if params else value()
        if isinstance(value, StateGraph):
            value = value.compile()
    if not isinstance(value, Pregel):
        raise GraphLoadError(f"Graph {graph_id!r} ({spec}) is not a LangGraph graph.")
    return value


def langgraph_preload() -> None:
    """Import what loading and running a graph takes (about a second, several on a loaded
    machine), for a process that will run graphs: a cluster, before it forks its workers, so that
    none of them imports it inside its first run, between the claim and the first heartbeat."""
    # Loaded, not used here (ruff flags the last import of each package name).
    import langchain_core.messages  # noqa: F401
    import langgraph.errors
    import langgraph.graph
    import langgraph.pregel
    import langgraph.types  # noqa: F401

    import checkpoints.saver  # noqa: F401
    import store.backend  # noqa: F401


def graph_get(
    graph_id: str, *, checkpointer: BaseCheckpointSaver | None = None, store: BaseStore | None = None
) -> Pregel:
    """The compiled graph ``graph_id``, bound to ``checkpointer`` and ``store`` when given."""
    specs = graph_specs()
    if graph_id not in specs:
        raise GraphNotFound(graph_id)
    graph = _load(graph_id, specs[graph_id])
    bound: dict[str, Any] = {}
    if checkpointer is not None:
        bound["checkpointer"] = checkpointer
    if store is not None:
        bound["store"] = store
    return graph.copy(update=bound) if bound else graph


@cache
def checkpointer() -> BaseCheckpointSaver:
    """The saver every thread's checkpoints go through: ours on Django models, one per process
    (it keeps no state between calls; a worker's run takes a ``sole_writer()`` copy).

    Falls back to a process-local in-memory saver while the ``checkpoints`` app is absent, which
    only works when the API and the graph run in one process (unit tests).
    """
    try:
        from checkpoints.saver import DjangoCheckpointSaver
    except ImportError:
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver()
    return DjangoCheckpointSaver()


def system_assistant_id(graph_id: str) -> uuid.UUID:
    return uuid.uuid5(SYSTEM_ASSISTANT_NAMESPACE, graph_id)


def system_assistants_ensure() -> None:
    """Create the system assistant of every registered graph that lacks one. Idempotent.

    Called after migrate, once per process at start (``runs.apps``) and by a run create that
    finds one missing, so a flushed test database or a graph added to the config since the last
    migrate still gets its assistant; reads never call it.
    """
    from runs.models import Assistant, AssistantVersion

    wanted = {system_assistant_id(graph_id): graph_id for graph_id in graph_ids()}
    existing = set(Assistant.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    for assistant_id, graph_id in wanted.items():
        if assistant_id in existing:
            continue
        try:
            with transaction.atomic():
                assistant = Assistant.objects.create(
                    assistant_id=assistant_id,
                    owner=None,
                    graph_id=graph_id,
                    name=graph_id,
                    metadata={"created_by": "system"},
                )
                AssistantVersion.objects.create(
                    assistant=assistant,
                    version=1,
                    graph_id=graph_id,
                    name=graph_id,
                    metadata=assistant.metadata,
                    created_at=assistant.created_at,
                )
        except IntegrityError:  # another process created it meanwhile
            pass
