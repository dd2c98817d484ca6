"""Turn graph values (messages, interrupts, pydantic models, tuples...) into plain JSON data."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import sys
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from project.realtime.sse import encode_data

if TYPE_CHECKING:
    from langgraph.types import Interrupt

# Datetimes and dataclasses (interrupts among them) go to _step, which shapes them as the Python
# walk does; orjson's own shapes differ.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def interrupt_json(value: Interrupt) -> dict[str, Any]:
    """The shape of an interrupt in a thread state."""
    return {"id": value.id, "value": to_json(value.value)}


def to_json(value: Any) -> Any:
    """A JSON-serializable copy of ``value``; unknown objects become their ``str``, NaN and the
    infinities ``None`` (JSON has no such numbers: a run's events, encoded by orjson, say null).

    A graph's state is mostly plain dicts, lists and strings, copied at every values chunk and
    thread state, and it grows with a conversation: orjson encodes and decodes it some five
    times faster than a walk in Python. Anything orjson takes as it is comes back the same as
    from the walk; anything else goes through ``_step``, the walk's own rules. What orjson
    refuses (keys that are not strings, integers beyond 64 bits, very deep nesting) is walked.
    """
    if value is None or type(value) in (str, int, bool):
        return value
    try:
        return orjson.loads(orjson.dumps(value, default=_step, option=_ORJSON_OPTIONS))
    except orjson.JSONEncodeError:
        return _walk(value)


def to_json_encoded(value: Any) -> bytes:
    """``to_json(value)`` encoded as a run's events are (``project.realtime.sse.encode_data``): the same
    bytes, without building the copy in between."""
    if value is None or type(value) in (str, int, bool):
        return encode_data(value)
    try:
        return orjson.dumps(value, default=_step, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return encode_data(_walk(value))


def _walk(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _walk(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_walk(item) for item in value]
    return _walk(_step(value))


def _step(value: Any) -> Any:
    """``value`` one level closer to JSON: what it is made of, or its text."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, Mapping):
        return {str(key): item for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    # Not imported at the top: langgraph takes a second to import, and a value can only be an
    # Interrupt in a process that has imported it (one that loads a graph or its checkpoints).
    langgraph_types = sys.modules.get("langgraph.types")
    if langgraph_types is not None and isinstance(value, langgraph_types.Interrupt):
        # The shape of an `__interrupt__` entry in a values chunk (and /wait body).
        return {
            "value": value.value,
            "id": value.id,
            "response_schema": getattr(value, "response_schema", None),
        }
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # pydantic v2, including langchain messages
        return model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "_asdict"):
        return value._asdict()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
