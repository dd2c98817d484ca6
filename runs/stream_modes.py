"""What each API stream mode asks of LangGraph and which SSE events it produces.

The worker (``runs.tasks``) turns what ``graph.astream`` yields into SSE events named as the real
server names them; the readers (``runs.streams``) use the same table to filter a join by mode.

======================  ==========================  ==============================================
API stream mode         LangGraph source            SSE events
======================  ==========================  ==============================================
values, updates,        the same astream mode       ``<mode>``: the chunk
custom, debug, tasks,
checkpoints
messages-tuple          astream ``messages``        ``messages``: ``[message_chunk, metadata]``
messages                astream ``messages``        ``messages/metadata`` ``{id: {"metadata"}}``
                                                    once per message, then ``messages/partial``
                                                    (``[message so far]``) for chunks or
                                                    ``messages/complete`` (``[message]``)
events                  ``astream_events`` v2       ``events``: each event dict
======================  ==========================  ==============================================

With ``stream_subgraphs`` the events of a subgraph are named ``<event>|<ns1>|<ns2>...``.
``metadata`` (first) and ``error`` (on failure) are written by the worker whatever the modes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runs.jsonable import to_json

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

# API mode -> the LangGraph astream mode that feeds it (``events`` comes from astream_events).
GRAPH_MODE = {
    "values": "values",
    "updates": "updates",
    "custom": "custom",
    "debug": "debug",
    "tasks": "tasks",
    "checkpoints": "checkpoints",
    "messages": "messages",
    "messages-tuple": "messages",
}
API_MODES = (*GRAPH_MODE, "events")

# Events every join receives whatever its stream_mode filter.
ALWAYS_SENT = frozenset({"metadata", "error", "end", "feedback"})


def event_name(name: str, namespace: Iterable[str]) -> str:
    return "|".join([name, *namespace])


def modes_of_event(event: str) -> frozenset[str]:
    """The API stream modes that produce SSE event ``event`` (empty for ALWAYS_SENT ones)."""
    base = event.split("|", 1)[0]
    if base in ALWAYS_SENT:
        return frozenset()
    if base == "messages":
        return frozenset({"messages-tuple"})
    if base.startswith("messages/"):
        return frozenset({"messages"})
    return frozenset({base})


def event_wanted(event: str, modes: frozenset[str] | None) -> bool:
    """Whether a join filtered on ``modes`` (None: every mode) sends ``event``."""
    if modes is None:
        return True
    produced_by = modes_of_event(event)
    return not produced_by or bool(produced_by & modes)


class MessagesV1:
    """The ``messages`` mode: chunks of one message are summed, and each step is sent whole."""

    def __init__(self) -> None:
        self._messages: dict[str, BaseMessage] = {}

    def events(self, chunk: Any) -> list[tuple[str, Any]]:
        # Here, not at the top: only a worker running a graph gets here, and langchain takes a
        # second to import in every other process (the API's, the commands').
        from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message

        message, metadata = chunk
        if not isinstance(message, BaseMessage):
            return []
        out: list[tuple[str, Any]] = []
        key = message.id or ""
        seen = self._messages.get(key)
        if seen is None:
            self._messages[key] = message
            out.append(("messages/metadata", {key: {"metadata": to_json(metadata)}}))
        elif isinstance(seen, BaseMessageChunk) and isinstance(message, BaseMessageChunk):
            self._messages[key] = seen + message
        else:
            self._messages[key] = message
        whole = self._messages[key]
        name = "messages/partial" if isinstance(message, BaseMessageChunk) else "messages/complete"
        as_message = message_chunk_to_message(whole) if isinstance(whole, BaseMessageChunk) else whole
        out.append((name, [to_json(as_message)]))
        return out
