"""uuid_prefix_range: the ids that start with some hex digits, as a range of UUIDs.

The admins search ids by prefix: a range of the primary key (or any UUID column leading an index)
that every database reads off its index, where a LIKE over the ids' text reads every row.
"""

from __future__ import annotations

import re
import uuid

_HEX_PREFIX = re.compile(r"^[0-9a-fA-F-]{4,36}$")


def uuid_prefix_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(lowest, highest) UUID starting with ``term``'s hex digits (dashes anywhere, any case), or
    None when ``term`` is not at least 4 hex digits of a UUID."""
    if not _HEX_PREFIX.match(term):
        return None
    digits = term.replace("-", "").lower()
    if not 4 <= len(digits) <= 32:
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
