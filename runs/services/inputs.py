"""Checks of what a request names or carries, shared by the services: ids and JSON sizes."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings

from runs.errors import Unprocessable


def parse_uuid(value: Any, what: str) -> uuid.UUID:
    """``value`` as a UUID, or the real server's 422 ``Invalid <what> ID: must be a UUID``."""
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Unprocessable(f"Invalid {what} ID: must be a UUID") from None


def uuid_or_none(value: Any) -> uuid.UUID | None:
    """``value`` as a UUID, or None when it is not one (a graph id where an assistant id may be)."""
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def check_json_size(field: str, value: Any) -> None:
    """422 when ``value`` (metadata, a run's config) is over ``METADATA_MAX_BYTES`` as JSON: such
    blobs are copied into every run and state read, and searched as JSON."""
    limit = settings.METADATA_MAX_BYTES
    if not limit or value is None:
        return
    size = len(compact_json(value).encode())
    if size > limit:
        raise Unprocessable(
            f"{field} is too large: {size} bytes as JSON, over the limit of {limit} bytes "
            "(METADATA_MAX_BYTES)."
        )
