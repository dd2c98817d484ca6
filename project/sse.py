"""Server-Sent Events framing, byte-compatible with the LangGraph server (CRLF, compact JSON)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import StreamingHttpResponse

HEARTBEAT = b": heartbeat\r\n\r\n"
HEARTBEAT_INTERVAL = 5.0


def encode_data(data: Any) -> bytes:
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)


def sse_event(event: str, data: Any = None, *, event_id: str | int | None = None, raw: bytes | None = None) -> bytes:
    """One SSE event; ``raw`` is already-encoded JSON (stored events are replayed untouched)."""
    payload = raw if raw is not None else encode_data(data)
    frame = b"event: " + event.encode() + b"\r\ndata: " + payload + b"\r\n"
    if event_id is not None:
        frame += b"id: " + str(event_id).encode() + b"\r\n"
    return frame + b"\r\n"


class EventStreamResponse(StreamingHttpResponse):
    def __init__(self, stream: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(stream, content_type="text/event-stream; charset=utf-8", **kwargs)
        self["Cache-Control"] = "no-store"
        # Tell nginx-style proxies not to buffer, or events arrive in lumps.
        self["X-Accel-Buffering"] = "no"
