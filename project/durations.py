"""How a duration is shown to people: the admin pages of both apps and the terminal commands."""

from __future__ import annotations


def format_duration(seconds: float | None, *, separator: str = " ") -> str:
    """``-`` when there is none, tenths of a second under a minute, whole seconds beyond:
    ``4.2s``, ``3m 07s``, ``2h 05m 09s``. The terminal tables pass ``separator=""``
    (``3m07s``) so that every cell stays one word for ``cut`` and ``awk``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{separator}{minutes:02d}m{separator}{secs:02d}s"
    return f"{minutes}m{separator}{secs:02d}s"
