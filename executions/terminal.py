"""Terminal rendering for the executions management commands: progress bar, validation errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.management.base import OutputWrapper


def _plain(text: str) -> str:
    # Commands style stderr red by default; progress is not an error.
    return text


@dataclass(frozen=True)
class ProgressSnapshot:
    """What the bar shows; built from an ``Execution`` row (or its ``values()``)."""

    status: str
    percentage: float
    current_step: int
    total_steps: int | None
    step_name: str


def render_progress(snapshot: ProgressSnapshot, *, width: int = 30) -> str:
    """One line: ``[#######.......]  45%  step 2/5  split sentences  (running)``."""
    percentage = min(100.0, max(0.0, snapshot.percentage))
    filled = int(width * percentage / 100)
    parts = [f"[{'#' * filled}{'.' * (width - filled)}]", f"{int(percentage):3d}%"]
    if snapshot.total_steps:
        parts.append(f"step {snapshot.current_step}/{snapshot.total_steps}")
    if snapshot.step_name:
        parts.append(snapshot.step_name)
    parts.append(f"({snapshot.status})")
    return "  ".join(parts)


class ProgressBar:
    """Draws progress on ``stream``: redrawn in place on a TTY, one plain line per change otherwise.

    Plain lines keep logs and pipes readable (no carriage returns in a CI log). There a change
    means a new status, step or step name, or another tenth of the way done: a percent-by-percent
    agent such as ``sleep`` would otherwise write a hundred lines. Nothing is drawn when nothing
    visible changed, so a fast poll does not flood either output.
    """

    def __init__(self, stream: OutputWrapper, *, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._interactive = stream.isatty()
        self._last_line: str | None = None
        self._last_key: str | tuple | None = None
        self._open_line = False

    def update(self, snapshot: ProgressSnapshot) -> None:
        line = render_progress(snapshot, width=self._width)
        key = line if self._interactive else self._plain_key(snapshot)
        if key == self._last_key:
            return
        self._last_key = key
        if self._interactive:
            # Pad with spaces so a shorter line fully covers the previous one.
            padding = " " * max(0, len(self._last_line or "") - len(line))
            self._stream.write(f"\r{line}{padding}", style_func=_plain, ending="")
            self._open_line = True
        else:
            self._stream.write(line, style_func=_plain)
        self._stream.flush()
        self._last_line = line

    @staticmethod
    def _plain_key(snapshot: ProgressSnapshot) -> tuple:
        tenth = int(min(100.0, max(0.0, snapshot.percentage)) // 10)
        return (snapshot.status, snapshot.current_step, snapshot.total_steps, snapshot.step_name, tenth)

    def close(self) -> None:
        """End the redrawn line, so whatever is printed next starts on its own line."""
        if self._open_line:
            self._stream.write("", style_func=_plain)
            self._stream.flush()
            self._open_line = False


def validation_messages(detail: Any, path: str = "") -> list[str]:
    """``inputs.seconds: This field is required.`` lines from a ValidationError's detail."""
    if isinstance(detail, dict):
        return [
            message
            for key, value in detail.items()
            for message in validation_messages(
                value, path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            )
        ]
    if isinstance(detail, list):
        return [message for item in detail for message in validation_messages(item, path)]
    return [f"{path}: {detail}" if path else str(detail)]
