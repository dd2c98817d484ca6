"""Turn graph values (messages, interrupts, pydantic models, tuples...) into plain JSON data."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import uuid
from collections.abc import Mapping
from typing import Any

from langgraph.types import Interrupt


def interrupt_json(value: Interrupt) -> dict[str, Any]:
    """The shape of an interrupt in a thread state."""
    return {"id": value.id, "value": to_json(value.value)}


def to_json(value: Any) -> Any:
    """A JSON-serializable copy of ``value``; unknown objects become their ``str``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if isinstance(value, Interrupt):
        # The shape of an `__interrupt__` entry in a values chunk (and /wait body).
        return {
            "value": to_json(value.value),
            "id": value.id,
            "response_schema": to_json(getattr(value, "response_schema", None)),
        }
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # pydantic v2, including langchain messages
        return to_json(model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if hasattr(value, "_asdict"):
        return to_json(value._asdict())
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
