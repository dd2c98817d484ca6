"""django-q2 entry points: they take an id and hand it to the runtime."""

from executions import runtime


def run_execution(execution_id: str) -> str:
    return runtime.execute(execution_id)


def noop() -> None:
    """A raw django-q2 task with no work, the baseline of `make bench`."""
