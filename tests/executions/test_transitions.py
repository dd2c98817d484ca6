"""The execution status transition table: each allowed move works, every other move is refused.

``ALLOWED`` is written out here from the product's lifecycle (and ``ExecutionStatus``'s
docstring), not imported: the code's table must agree with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from itertools import product
from typing import Any

import pytest
from django.utils import timezone

from executions import recovery, runtime, services
from executions.models import EXECUTION_TRANSITIONS, Execution, ExecutionEventType, ExecutionStatus
from executions.transitions import ExecutionClaim, execution_transition
from project.api.errors import Conflict

pytestmark = pytest.mark.django_db

S = ExecutionStatus
ALLOWED = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.PENDING),
}
EVERY_PAIR = list(product(S.values, S.values))
WORKER = "somehost:4242"


def row_in(status: str, **config: Any) -> Execution:
    """An execution forced into ``status``, as if claimed once by ``WORKER`` two minutes ago
    (so that recovery finds a running one stale)."""
    execution = services.execution_create(type="agent", target_id="echo", config=config)
    Execution.objects.filter(pk=execution.pk).update(
        status=status, worker=WORKER, attempts=1, heartbeat_at=timezone.now() - timedelta(minutes=2)
    )
    return Execution.objects.get(pk=execution.pk)


def applied(execution: Execution, before: Execution, to: str) -> bool:
    """Whether the move happened: the status became ``to`` with its event; else the row's status
    and claim did not change and no status event was recorded (a worker whose finish a cancel
    refused records its ``worker_stopped``)."""
    after = Execution.objects.get(pk=execution.pk)
    if after.status == to and after.status != before.status:
        last = after.events.order_by("-seq").first()
        assert last.type == ExecutionEventType.STATUS and last.data["status"] == to
        assert after.event_seq == before.event_seq + 1
        return True
    assert (after.status, after.worker, after.attempts) == (before.status, before.worker, before.attempts)
    new_events = after.events.filter(seq__gt=before.event_seq)
    assert not new_events.filter(type=ExecutionEventType.STATUS).exists()
    return False


def test_the_docstring_lists_the_code_s_table():
    listed = set(re.findall(r"^\s+(\w+)\s+->\s+(\w+)\s", ExecutionStatus.__doc__, re.MULTILINE))
    assert listed == {(a.value, b.value) for a, b in ALLOWED}
    assert {(str(a), str(b)) for a, b in EXECUTION_TRANSITIONS} == listed


@pytest.mark.parametrize(("source", "target"), EVERY_PAIR)
def test_a_status_change_applies_only_along_the_table(source: str, target: str) -> None:
    execution = row_in(source)

    won = execution_transition(
        execution_id=execution.pk,
        event_type=ExecutionEventType.STATUS,
        event_data={"status": target},
        status=target,
    )

    assert won == ((source, target) in ALLOWED)
    assert applied(execution, execution, target) == won


def test_a_caller_may_not_widen_the_table():
    execution = row_in(S.COMPLETED)

    with pytest.raises(ValueError, match="no transition"):
        execution_transition(
            execution_id=execution.pk, allowed=[S.COMPLETED], event_type=ExecutionEventType.STATUS,
            event_data={"status": S.PENDING}, status=S.PENDING,
        )
    assert Execution.objects.get(pk=execution.pk).status == S.COMPLETED


def _claim(execution: Execution) -> object:
    return runtime.claim(execution.pk)


def _cancel(execution: Execution) -> object:
    try:
        return services.execution_cancel(execution=execution)
    except Conflict:
        return None


def _claim_of(execution: Execution) -> ExecutionClaim:
    return ExecutionClaim(execution.pk, WORKER, 1)


def _complete(execution: Execution) -> object:
    return runtime.execution_finish(
        claim=_claim_of(execution), status=S.COMPLETED, outputs={"ok": True}, error=None
    )


def _fail(execution: Execution) -> object:
    return runtime.execution_finish(
        claim=_claim_of(execution), status=S.FAILED, error={"type": "X", "message": "failed"}
    )


def _retry(execution: Execution) -> object:
    return runtime.execution_fail_or_retry(
        ctx=runtime.ExecutionContext(execution), error={"type": "X", "message": "try again"}
    )


def _reap(execution: Execution) -> object:
    return recovery.executions_reap_stale(heartbeat_timeout=30)


# The entry points that make each move: (name, the status it moves to, config, the call, and the
# statuses it moves from when not every source the table allows for that status).
ENTRY_POINTS: list[tuple[str, str, dict[str, Any], Callable[[Execution], object], set[str] | None]] = [
    ("worker claim", S.RUNNING, {}, _claim, None),
    ("user cancel", S.CANCELLED, {}, _cancel, None),
    ("worker completes", S.COMPLETED, {}, _complete, None),
    ("worker fails", S.FAILED, {}, _fail, {S.RUNNING}),
    ("worker retries", S.PENDING, {"max_attempts": 3}, _retry, None),
    ("recovery requeues", S.PENDING, {"max_attempts": 3}, _reap, None),
    ("recovery fails", S.FAILED, {"max_attempts": 1}, _reap, {S.RUNNING}),
]


@pytest.mark.parametrize(
    ("source", "entry_point"),
    list(product(S.values, ENTRY_POINTS)),
    ids=lambda value: value[0] if isinstance(value, tuple) else value,
)
def test_every_entry_point_moves_only_along_the_table(source: str, entry_point: tuple) -> None:
    _name, target, config, call, sources = entry_point
    execution = row_in(source, **config)
    before = Execution.objects.get(pk=execution.pk)

    call(execution)

    expected = (source, target) in ALLOWED and (sources is None or source in sources)
    assert applied(execution, before, target) == expected
