"""The words that turn a yes/no setting or query parameter on; anything else is off."""

from __future__ import annotations

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
# Where anything else is an error rather than off (a query parameter that must be a boolean).
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    return text.strip().lower() in TRUE_WORDS
