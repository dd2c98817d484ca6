"""What a JSON request body may hold: text every database can store and every response can write
back, nested no deeper than ``MAX_JSON_DEPTH``.

Python's ``json`` accepts things the rest of the platform cannot handle:

- a lone UTF-16 surrogate (``"\\ud800"``, or its bytes ``ED A0 80``): SQLite stores it, then every
  response that contains it fails to encode as UTF-8, so one row would break a user's list;
  PostgreSQL refuses it with an error deep in a query;
- the NUL character (``"\\u0000"``): PostgreSQL refuses it in text and jsonb;
- nesting about a thousand levels deep: the parser itself (and each walk of the value after it)
  raises ``RecursionError``.

``body_problem`` finds the first such thing in a body and says where, as a field path
(``inputs.messages[0].content``), so the API can refuse it with a 4xx naming the field. An
ordinary body costs a few byte searches (about a microsecond); one with more brackets than the
limit costs a pass over its brackets too (about twice its parse); only a body that may hold bad
text is parsed and walked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

LONE_SURROGATE = "Text may not contain a lone UTF-16 surrogate (a \\ud800-\\udfff escape that is not half of a pair)"
NUL = "Text may not contain the NUL character (U+0000)"

# Escapes that decode to a lone surrogate (a high one not followed by a low one, a low one not
# preceded by a high one) or to NUL, and the UTF-8-style bytes of a surrogate (json decodes bytes
# with "surrogatepass"). A valid pair, as clients that escape everything send each emoji, does
# not match. An escaped backslash before "u" may: the walk tells.
_SUSPECT_ESCAPE = re.compile(
    rb"\\u(?:0000"
    rb"|[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F][0-9a-fA-F]{2})"
)
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)
_SURROGATE_CHAR = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


@dataclass(frozen=True)
class BodyProblem:
    """Why a body is refused (``reason``, a sentence without a final period) and where."""

    reason: str
    # ``inputs.a``, ``[0].input``; "" for the body itself or an unknown place.
    field: str
    in_key: bool = False  # the problem is in the name of ``field``, not its value

    @property
    def where(self) -> str:
        if self.in_key:
            return f"the key {self.field}"
        return self.field or "the request body"

    @property
    def message(self) -> str:
        return f"{self.reason}: found in {self.where}."


def body_problem(raw: bytes) -> BodyProblem | None:
    """The first thing in the JSON body ``raw`` that the platform cannot store or nest, or None.

    A body that is not JSON at all is not this check's business (None): the view's parser answers
    it as it always has.
    """
    if b"\x00" in raw:
        # Never valid in UTF-8 JSON text; UTF-16 and UTF-32 bodies are refused with it.
        return BodyProblem(NUL, "")
    limit = settings.MAX_JSON_DEPTH
    # Nesting cannot pass the limit with fewer brackets than that, whatever the body holds.
    if raw.count(b"[") + raw.count(b"{") > limit and _deeper_than(raw, limit):
        return BodyProblem(_too_deep(limit), _deep_field(raw, limit))
    if _SUSPECT_ESCAPE.search(raw) is None and _SURROGATE_BYTES.search(raw) is None:
        return None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value_problem(document)


def value_problem(value: Any, field: str = "") -> BodyProblem | None:
    """The first string (key or value) in the parsed JSON ``value`` holding a lone surrogate or
    NUL, or the first container nested past ``MAX_JSON_DEPTH``, in document order, with its path
    below ``field``. For values that did not come through ``body_problem``, e.g. a command's
    arguments. The walk keeps its own stack, so no nesting makes it fail."""
    limit = settings.MAX_JSON_DEPTH
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            reason = _text_problem(item)
            if reason:
                return BodyProblem(reason, path)
        elif isinstance(item, (dict, list)) and depth > limit:
            return BodyProblem(_too_deep(limit), _shortened(path))
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                key_path = _join(path, key) if isinstance(key, str) else f"{path}[{key!r}]"
                reason = _text_problem(key) if isinstance(key, str) else None
                if reason:
                    return BodyProblem(reason, key_path, in_key=True)
                children.append((child, key_path, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend((item[i], f"{path}[{i}]", depth + 1) for i in range(len(item) - 1, -1, -1))
    return None


def _too_deep(limit: int) -> str:
    return f"JSON may not be nested more than {limit} levels deep"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL
    # json joins a valid pair into one character, so any surrogate left is a lone one.
    if not text.isascii() and _SURROGATE_CHAR.search(text):
        return LONE_SURROGATE
    return None


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    # The key as a JSON string with every non-ASCII character escaped, so the message itself
    # can be written out whatever the key holds.
    return f"{path}[{json.dumps(key)}]"


def _deeper_than(raw: bytes, limit: int) -> bool:
    """Whether the containers of ``raw`` may nest more than ``limit`` deep, without parsing it:
    the strings go, every bracket becomes ``[`` or ``]``, then each pass drops the innermost
    pairs, one level at a time. A malformed body's brackets left unpaired count as open ones
    (the parser recurses into them before it finds the error)."""
    skeleton = _without_strings(raw).translate(_SQUARE, _NOT_BRACKETS)
    if b"[" * (limit + 1) in skeleton:
        return True  # the common shape of an attack: one long run of openers
    levels = 0
    while skeleton:
        inner = skeleton.replace(b"[]", b"")
        if len(inner) == len(skeleton):
            break
        levels += 1
        if levels > limit:
            return True
        skeleton = inner
    return levels + skeleton.count(b"[") > limit


def _without_strings(raw: bytes) -> bytes:
    """``raw`` without its strings' contents, for valid JSON: once the escaped backslashes and
    quotes are gone, every other quote opens or closes a string. (A regular expression matching
    whole strings took twice as long.)"""
    return b"".join(raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[0::2])


def _deep_field(raw: bytes, limit: int) -> str:
    """The path of the first container that opens more than ``limit`` levels deep in ``raw``,
    found by reading its tokens (parsing it is what must not be tried)."""
    # One frame per open container: [is_object, current key or index, a key comes next].
    frames: list[list[Any]] = []
    for match in _TOKEN.finditer(raw):
        token = match.group()
        first = token[:1]
        if first in (b"{", b"["):
            if len(frames) >= limit:
                break
            frames.append([first == b"{", None if first == b"{" else 0, first == b"{"])
        elif first in (b"}", b"]"):
            if frames:
                frames.pop()
        elif first == b",":
            if frames:
                if frames[-1][0]:
                    frames[-1][2] = True
                else:
                    frames[-1][1] += 1
        elif first == b":":
            if frames:
                frames[-1][2] = False
        elif frames and frames[-1][0] and frames[-1][2]:
            try:
                frames[-1][1] = json.loads(token)
            except ValueError:
                frames[-1][1] = "?"
    path = ""
    for is_object, position, _ in frames:
        if is_object:
            path = _join(path, position if isinstance(position, str) else "?")
        else:
            path = f"{path}[{position}]"
    return _shortened(path)


def _shortened(path: str, limit: int = 120) -> str:
    # A path a hundred levels long names its field in its first few.
    return path if len(path) <= limit else path[: limit - 3] + "..."
