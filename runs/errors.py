"""Errors of the LangGraph-compatible API; ``project.api.errors`` renders them as ``{"detail": "..."}``,
like the real server."""

from rest_framework import status
from rest_framework.exceptions import APIException


class LangGraphError(APIException):
    """An HTTP error whose body is exactly ``{"detail": <message>}``."""

    status_code: int = status.HTTP_400_BAD_REQUEST

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail)
        if status_code is not None:
            self.status_code = status_code


class BadRequest(LangGraphError):
    status_code = status.HTTP_400_BAD_REQUEST


class NotFound(LangGraphError):
    status_code = status.HTTP_404_NOT_FOUND

    def __init__(self, detail: str = "Not Found") -> None:
        super().__init__(detail)


class Conflict(LangGraphError):
    status_code = status.HTTP_409_CONFLICT


class Unprocessable(LangGraphError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY


THREAD_OR_ASSISTANT_NOT_FOUND = "Thread or assistant not found."
MULTITASK_REJECTED = (
    "Thread is already running a task. Wait for it to finish or choose a different multitask "
    "strategy."
)
NO_RUNS_TO_CANCEL = "No runs found to cancel."
NO_MATCHING_RUNS_TO_CANCEL = (
    "No matching runs to cancel. Please verify the thread ID and run IDs are correct, and the "
    "runs haven't been deleted or completed."
)


def thread_not_found(thread_id: object) -> NotFound:
    return NotFound(f"Thread with ID {thread_id} not found")
