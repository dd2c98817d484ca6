"""JSON written back to API clients and staff, readable whatever text a stored row holds.

``project.api.json_input`` refuses lone UTF-16 surrogates at the door, but SQLite kept those sent
before (and a target's outputs may hold one): a strict UTF-8 encode of such text fails, so one
row would fail every response that shows it, its user's whole list included. JSON can carry a lone
surrogate as a ``\\ud800`` escape, so these writers send the value exactly as stored, escaped,
instead of rewriting users' data in a migration. Each tries the usual fast encoding first; the
escaping costs something only for the rare text that needs it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rest_framework import renderers

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogates_escaped(text: str) -> str:
    """``text`` with each lone surrogate written as its JSON escape (``\\ud800``): inside JSON
    text the same value, and in any text something UTF-8 can carry."""
    if text.isascii():
        return text
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def json_text(value: Any, **dumps_options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, ...)`` that can always be encoded as UTF-8: for
    pages and files, where readable text beats ASCII escapes."""
    return lone_surrogates_escaped(json.dumps(value, ensure_ascii=False, **dumps_options))


class _ASCIIJSONRenderer(renderers.JSONRenderer):
    ensure_ascii = True


class JSONRenderer(renderers.JSONRenderer):
    """DRF's renderer (UTF-8, unescaped), falling back to ASCII escapes for a response that holds
    a lone surrogate instead of failing with a 500."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return _ASCIIJSONRenderer().render(data, accepted_media_type, renderer_context)
