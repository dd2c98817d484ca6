"""Worker side of an execution: claim, run the target with a context, heartbeat, finish.

The claim is a conditional UPDATE pending -> running, so a job that was cancelled, or that
another worker already took (a redelivered broker message), never starts. Every later write is
conditional on the row still being ``running`` under this claim (``ExecutionClaim``: this worker,
this attempt): when a user cancels, the row turns ``cancelled`` at once and the worker finds out
at its next progress point or cancellation check and stops. A worker that froze (SIGSTOP, a VM
pause) past the heartbeat timeout finds the same way that recovery gave its job to another
worker, or failed it: its writes change nothing, and it stops its target with the reason
``superseded`` and writes nothing more.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, ClassVar, TypeVar, cast
from uuid import UUID

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import Error as DatabaseFailure
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone
from django_q.exceptions import TimeoutException

from executions import worker_loop
from executions.completion import execution_ended_notify
from executions.models import Execution, ExecutionEventType, ExecutionStatus, ExecutionType
from executions.queueing import enqueue_execution
from executions.registry import TargetNotFound, registry
from executions.scheduling import execution_claim, execution_slot_freed
from executions.transitions import (
    ExecutionClaim,
    execution_event_append_if,
    execution_transition,
)
from project.telemetry import job_ending, job_started

logger = logging.getLogger(__name__)

T = TypeVar("T")
RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _reconnecting(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function``; when the database dropped our connection (a restart, a failover), retry
    on a fresh one for a few seconds rather than fail a job that is doing fine."""
    for delay in RECONNECT_DELAYS:
        try:
            return function(*args, **kwargs)
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block:
                raise
            logger.warning("database connection lost; reconnecting in %.2fs", delay, exc_info=True)
            connection.close()
            time.sleep(delay)
    return function(*args, **kwargs)


# Why a worker stopped its target before the end (the ``reason`` of a ``worker_stopped`` event).
CANCELLED = "cancelled"
SUPERSEDED = "superseded"


class ExecutionCancelled(Exception):
    """Raised inside a target when its execution is no longer running (cancelled)."""


class ExecutionSuperseded(ExecutionCancelled):
    """Raised inside a target whose worker no longer holds the execution: it froze past the
    heartbeat timeout and recovery requeued the job (another worker may run it now) or failed it.
    A cancel to the target's code, which need not tell the two apart; nothing it writes lands."""


class TargetFailed(Exception):
    """Raise from a target to fail with a clean message and no traceback in ``error.details``."""


def _worker_name() -> str:
    # The module may be imported before django-q2 forks its workers; name the process we run in.
    return f"{socket.gethostname()}:{os.getpid()}"


def _percentage(value: float) -> float:
    return round(min(100.0, max(0.0, float(value))), 2)


class ExecutionContext:
    """What a running target sees as ``ctx``: progress, logs and cancellation."""

    def __init__(self, execution: Execution) -> None:
        """``execution``: the row as the claim left it (its worker and attempts name the claim)."""
        self.execution_id: UUID = execution.id
        self.claim = ExecutionClaim(execution.id, execution.worker, execution.attempts)
        self._holds = self.claim.holds()
        self.inputs: dict = execution.inputs
        self.config: dict = execution.config
        self.type: str = execution.type
        self.target_id: str = execution.target_id
        self._dependencies: dict[str, Any] | None = None
        self._current_step = execution.current_step
        self._total_steps = execution.total_steps
        self._step_name = execution.step_name
        self._percentage = execution.percentage
        self._last_write = 0.0
        self._last_cancel_check = time.monotonic()
        self._cancelled = threading.Event()
        self._stop_reason: str | None = None
        self._progress_interval = settings.EXECUTIONS_PROGRESS_INTERVAL
        self._cancel_check_interval = settings.EXECUTIONS_CANCEL_CHECK_INTERVAL

    @property
    def dependencies(self) -> dict[str, Any]:
        """The outputs of the executions this one depends on (``depends_on``), by their id; all of
        them completed before it was claimed. Read once, on first use."""
        if self._dependencies is None:
            self._dependencies = {
                str(pk): outputs
                for pk, outputs in _reconnecting(
                    lambda: list(
                        Execution.objects.filter(downstream_links__downstream=self.execution_id)
                        .values_list("id", "outputs")
                    )
                )
            }
        return self._dependencies

    # --- progress -------------------------------------------------------------------------------

    def progress(
        self,
        current_step: int | None = None,
        total_steps: int | None = None,
        step_name: str | None = None,
        percentage: float | None = None,
    ) -> None:
        """Report progress. Step changes are written at once, the rest at most every interval.

        Raises ``ExecutionCancelled`` when the execution was cancelled meanwhile
        (``ExecutionSuperseded`` when this worker lost it).
        """
        step_changed = False
        if current_step is not None and current_step != self._current_step:
            self._current_step, step_changed = current_step, True
        if total_steps is not None:
            self._total_steps = total_steps
        if step_name is not None and step_name != self._step_name:
            self._step_name, step_changed = step_name, True
        if percentage is not None:
            self._percentage = _percentage(percentage)
        elif step_changed and self._total_steps:
            self._percentage = _percentage(100.0 * (self._current_step - 1) / self._total_steps)
        now = time.monotonic()
        if step_changed or now - self._last_write >= self._progress_interval:
            self._write_progress(now)
        else:
            self.check_cancelled()

    def _write_progress(self, now: float) -> None:
        progress = self.progress_snapshot()
        still_running = _reconnecting(
            execution_transition,
            execution_id=self.execution_id,
            allowed=[ExecutionStatus.RUNNING],
            where=self._holds,
            event_type=ExecutionEventType.PROGRESS,
            event_data=progress,
            current_step=self._current_step,
            total_steps=self._total_steps,
            step_name=self._step_name[:200],
            percentage=self._percentage,
            heartbeat_at=timezone.now(),
        )
        self._last_write = self._last_cancel_check = now
        if not still_running:
            self.mark_cancelled()
            self.check_cancelled()

    def progress_snapshot(self) -> dict[str, Any]:
        return {
            "current_step": self._current_step,
            "total_steps": self._total_steps,
            "step_name": self._step_name,
            "percentage": self._percentage,
        }

    def log(self, message: str, **data: Any) -> None:
        """Append a log line to the execution's event timeline.

        A target may still log after a cancel (while it cleans up), not once its worker lost the
        execution: that raises ``ExecutionSuperseded``."""
        seq = _reconnecting(
            execution_event_append_if,
            execution_id=self.execution_id,
            event_type=ExecutionEventType.LOG,
            data={"message": str(message), **data},
            allowed=[ExecutionStatus.RUNNING, ExecutionStatus.CANCELLED],
            where=self._holds,
        )
        if seq is None:
            self.mark_cancelled()
            self.check_cancelled()

    # --- cancellation ---------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the execution is no longer running under this worker's claim; checks the row
        at most every interval."""
        if self._cancelled.is_set():
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= self._cancel_check_interval:
            self._last_cancel_check = now
            row = self._read_claim()
            if row is None or row[0] != ExecutionStatus.RUNNING or not self._is_ours(row):
                self._stop(self._reason_from(row))
        return self._cancelled.is_set()

    @property
    def stop_reason(self) -> str | None:
        """Why the target must stop: ``cancelled`` (by a user, or the row is gone) or
        ``superseded`` (this worker no longer holds the execution); None while it may go on."""
        if not self._cancelled.is_set():
            return None
        if self._stop_reason is None:
            # Stopped by a write that changed nothing (here or in the heartbeat thread): one read,
            # on this rare path only, says which.
            self._stop_reason = self._reason_from(self._read_claim())
        return self._stop_reason

    def check_cancelled(self) -> None:
        if self.cancelled:
            if self.stop_reason == SUPERSEDED:
                raise ExecutionSuperseded()
            raise ExecutionCancelled()

    def mark_cancelled(self) -> None:
        """A write of this claim changed nothing: stop at the next check (``stop_reason`` says
        why)."""
        self._cancelled.set()

    def _stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._cancelled.set()

    def _read_claim(self) -> tuple[str, str, int] | None:
        return _reconnecting(
            Execution.objects.filter(pk=self.execution_id)
            .values_list("status", "worker", "attempts")
            .first
        )

    def _is_ours(self, row: tuple[str, str, int]) -> bool:
        return (row[1], row[2]) == (self.claim.worker, self.claim.attempt)

    def _reason_from(self, row: tuple[str, str, int] | None) -> str:
        # A cancel keeps the claim's worker and attempt; recovery's requeue clears the worker and
        # a new claim counts another attempt. A row recovery failed (worker lost) keeps both, but
        # nobody cancelled it: that worker was superseded too.
        if row is None or (row[0] == ExecutionStatus.CANCELLED and self._is_ours(row)):
            return CANCELLED
        return SUPERSEDED

    def sleep(self, seconds: float) -> None:
        """Sleep, waking to check for cancellation; raises ``ExecutionCancelled``."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            self.check_cancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cancelled.wait(min(remaining, self._cancel_check_interval))


class Heartbeat:
    """Beats ``heartbeat_at`` while the target runs, and notices a cancel during long silences.

    One thread per worker process beats every execution the process runs: a thread per
    execution cost a thread start and a wake-up to stop it, for every job, most of which end long
    before their first beat. The thread wakes every quarter interval, so an execution's first
    beat comes between one and 1.25 intervals after it started; it is never woken on purpose.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    # context -> when its next beat is due on the monotonic clock. Keyed by context, not by
    # execution: a process may hold a stale claim and a new claim of one execution at once.
    _beating: ClassVar[dict[ExecutionContext, float]] = {}
    _thread: ClassVar[threading.Thread | None] = None
    _pid: ClassVar[int | None] = None

    def __init__(self, ctx: ExecutionContext, interval: float) -> None:
        self._ctx = ctx
        self._interval = interval

    def start(self) -> None:
        cls = Heartbeat
        with cls._lock:
            cls._beating[self._ctx] = time.monotonic() + self._interval
            # A forked worker inherits the class state but not the thread.
            if cls._thread is None or cls._pid != os.getpid() or not cls._thread.is_alive():
                cls._pid = os.getpid()
                cls._thread = threading.Thread(
                    target=cls._run, args=(self._interval,), name="heartbeats", daemon=True
                )
                cls._thread.start()

    def stop(self) -> None:
        with Heartbeat._lock:
            Heartbeat._beating.pop(self._ctx, None)

    @classmethod
    def _run(cls, interval: float) -> None:
        while True:
            time.sleep(interval / 4)
            now = time.monotonic()
            with cls._lock:
                due = [ctx for ctx, next_beat in cls._beating.items() if next_beat <= now]
                for ctx in due:
                    cls._beating[ctx] = now + interval
            if not due:
                continue
            for ctx in due:
                cls._beat(ctx)
            with cls._lock:
                idle = not cls._beating
            if idle:
                connection.close()  # hold a database connection only while jobs run

    @classmethod
    def _beat(cls, ctx: ExecutionContext) -> None:
        try:
            alive = Execution.objects.filter(
                ctx.claim.holds(), pk=ctx.execution_id, status=ExecutionStatus.RUNNING
            ).update(heartbeat_at=timezone.now())
        except DatabaseFailure:  # OperationalError, and InterfaceError once the link is closed
            # The database restarted or dropped us: a failed beat must not end the beating,
            # or a live job would look like a dead worker. Reconnect next time.
            logger.warning("heartbeat of execution %s failed", ctx.execution_id, exc_info=True)
            connection.close()
            return
        except Exception:  # anything else must not kill the thread that beats every job
            logger.exception("heartbeat of execution %s failed", ctx.execution_id)
            return
        if not alive:
            with cls._lock:
                cls._beating.pop(ctx, None)
            ctx.mark_cancelled()


def _error(error_type: str, message: str, details: dict | None = None) -> dict[str, Any]:
    return {"type": error_type, "message": message, "details": details or {}}


def _jsonable(value: Any) -> Any:
    """Outputs go into a JSONField; anything else is a target bug reported as a failure."""
    json.dumps(value)
    return value


def claim(execution_id: UUID | str) -> Execution | None:
    """pending -> running for this worker: the message's execution ``execution_id``, or the one
    that outranks it (``executions.scheduling``); None if nothing may run now (it was cancelled,
    already claimed, is a retry whose backoff has not passed, or waits for a concurrency slot)."""
    return execution_claim(hint=execution_id, worker=_worker_name())


def _run_target(execution: Execution, ctx: ExecutionContext) -> Any:
    target = registry.get(execution.type, execution.target_id)
    inputs = target.validate_inputs(execution.inputs)
    if execution.type == ExecutionType.AGENT:
        # Registered with @agent, so it has one.
        return cast(Callable[..., Any], target.agent_function)(inputs, ctx)
    steps = target.steps_for(inputs)
    data: Any = inputs
    total = len(steps)
    for index, pipeline_step in enumerate(steps, start=1):
        ctx.progress(current_step=index, total_steps=total, step_name=pipeline_step.name)
        data = pipeline_step.function(data, ctx)
    return data


def execution_finish(*, claim: ExecutionClaim, status: str, **fields: Any) -> bool:
    """running -> ``status`` (completed or failed) under ``claim``; False if the row is no longer
    running under it (cancelled, or this worker was superseded)."""
    data: dict[str, Any] = {"status": status}
    if fields.get("error"):
        data["error"] = fields["error"]
    return _reconnecting(
        execution_transition,
        execution_id=claim.execution_id,
        allowed=[ExecutionStatus.RUNNING],
        where=claim.holds(),
        event_type=ExecutionEventType.STATUS,
        event_data=data,
        status=status,
        completed_at=timezone.now(),
        heartbeat_at=None,
        **fields,
    )


def retry_delay(*, attempt: int, base: float) -> float:
    """Exponential backoff: base, 2·base, 4·base … capped at five minutes."""
    return min(300.0, base * 2 ** max(0, attempt - 1))


def execution_fail_or_retry(*, ctx: ExecutionContext, error: dict[str, Any]) -> str:
    """After the target failed: executions whose target's retry policy (or ``config.max_attempts``)
    allows another try, for this error type, go back to the queue after a backoff
    (running -> pending); the others and the last attempt fail. What
    happened: ``retrying``, ``failed``, or why the row refused (``cancelled``, ``superseded``)."""
    config = ctx.config if isinstance(ctx.config, dict) else {}
    policy = registry.retry_policy(ctx.type, ctx.target_id)
    max_attempts = config.get("max_attempts") or policy.max_attempts
    attempt = ctx.claim.attempt
    if attempt < max_attempts and policy.retries(error.get("type", "")):
        delay = retry_delay(
            attempt=attempt, base=float(config.get("retry_backoff", policy.retry_backoff))
        )
        requeued = _reconnecting(
            execution_transition,
            execution_id=ctx.execution_id,
            allowed=[ExecutionStatus.RUNNING],
            where=ctx.claim.holds(),
            event_type=ExecutionEventType.STATUS,
            event_data={
                "status": ExecutionStatus.PENDING, "reason": "retry", "attempt": attempt,
                "retry_in": delay, "error": error,
            },
            status=ExecutionStatus.PENDING,
            not_before=timezone.now() + timedelta(seconds=delay),
            error=error,
            heartbeat_at=None,
            worker="",
        )
        return "retrying" if requeued else _stopped(ctx)
    finished = execution_finish(claim=ctx.claim, status=ExecutionStatus.FAILED, error=error)
    return "failed" if finished else _stopped(ctx)


def _stopped(ctx: ExecutionContext) -> str:
    """The target was stopped, or its end was refused: record why, if this worker may still write.

    A cancel is recorded in a ``worker_stopped`` event. A superseded worker records nothing: the
    execution's timeline now belongs to the claim that superseded it (or to recovery)."""
    ctx.mark_cancelled()
    reason = ctx.stop_reason or CANCELLED
    if reason == SUPERSEDED:
        logger.warning(
            "execution %s: this worker's claim (attempt %d) was superseded while it was frozen or "
            "cut off; its target stopped and nothing it wrote since was kept",
            ctx.execution_id, ctx.claim.attempt,
        )
        return SUPERSEDED
    _reconnecting(
        execution_event_append_if,
        execution_id=ctx.execution_id,
        event_type=ExecutionEventType.WORKER_STOPPED,
        data={"reason": reason, "worker": ctx.claim.worker},
        allowed=[ExecutionStatus.CANCELLED],
        where=ctx.claim.holds(),
    )
    return CANCELLED


def execute(execution_id: UUID | str) -> str:
    """Run one execution to a terminal state. Returns what happened, for logs and tests:
    ``completed``, ``failed``, ``retrying``, ``cancelled``, ``superseded`` (this worker lost its
    claim meanwhile and stopped), ``released`` (given back to the queue by its stopping worker),
    ``handed over`` (an ``async def`` target, handed to the worker's event loop, where it runs
    beside others) or ``skipped`` (nothing to claim)."""
    execution = claim(execution_id)
    if execution is None:
        return "skipped"
    job_started(kind="execution", job_id=execution.pk, target=execution.target_id, attempt=execution.attempts)
    ctx = ExecutionContext(execution)
    heartbeat = Heartbeat(ctx, settings.EXECUTIONS_HEARTBEAT_INTERVAL)
    heartbeat.start()
    if not _is_async(execution):
        return _conclude(execution, ctx, heartbeat, lambda: _run_target(execution, ctx))
    host = worker_loop.current()
    if host is None or "executions" not in host.capacity:
        # No loop of the worker's here (tests, django-q2's sync mode): this thread waits for it.
        return _conclude(execution, ctx, heartbeat, lambda: async_to_sync(_drive_async)(execution, ctx, None))
    host.take("executions")
    host.spawn("executions", f"execution {execution.pk}", partial(_execute_on_loop, execution, ctx, heartbeat))
    return "handed over"


def _conclude(
    execution: Execution, ctx: ExecutionContext, heartbeat: Heartbeat, produce: Callable[[], Any]
) -> str:
    """Record the end of the execution as ``produce()`` says; logged and counted
    (``project.telemetry``) on either path, the worker's thread or its event loop."""
    with job_ending(kind="execution", job_id=execution.pk, target=execution.target_id) as report:
        report.outcome = _record_end(execution, ctx, heartbeat, produce)
        return report.outcome


def _record_end(
    execution: Execution, ctx: ExecutionContext, heartbeat: Heartbeat, produce: Callable[[], Any]
) -> str:
    """Record the end of the execution as ``produce()`` (the target's outputs, or what it raised)
    says."""
    try:
        try:
            outputs = _jsonable(produce())
        except Released:
            return _release(ctx, execution)
        except ExecutionCancelled:
            return _stopped(ctx)
        except TimeoutError:  # an async target past EXECUTIONS_TIMEOUT, stopped by its loop
            finished = execution_finish(
                claim=ctx.claim, status=ExecutionStatus.FAILED,
                error=_error("timeout", f"The execution exceeded its time limit ({settings.EXECUTIONS_TIMEOUT} s)."),
            )
            return "failed" if finished else _stopped(ctx)
        except TimeoutException as exc:
            execution_finish(
                claim=ctx.claim,
                status=ExecutionStatus.FAILED,
                error=_error("timeout", str(exc) or "The execution timed out."),
            )
            raise
        except TargetNotFound as exc:
            error = _error("target_not_found", str(exc))
            finished = execution_finish(claim=ctx.claim, status=ExecutionStatus.FAILED, error=error)
            return "failed" if finished else _stopped(ctx)
        except TargetFailed as exc:
            return execution_fail_or_retry(ctx=ctx, error=_error("TargetFailed", str(exc)))
        except Exception as exc:  # noqa: BLE001 the worker must survive whatever a target raises
            return execution_fail_or_retry(
                ctx=ctx,
                error=_error(
                    type(exc).__name__,
                    str(exc) or type(exc).__name__,
                    {"traceback": traceback.format_exc(limit=20)},
                ),
            )
        if outputs is not None and not isinstance(outputs, dict):
            outputs = {"result": outputs}
        finished = execution_finish(
            claim=ctx.claim,
            status=ExecutionStatus.COMPLETED,
            outputs=outputs if outputs is not None else {},
            error=None,
            percentage=100.0,
        )
        if not finished:
            return _stopped(ctx)
        return "completed"
    finally:
        heartbeat.stop()
        if ctx.stop_reason != SUPERSEDED:
            execution_slot_freed(execution)
        # Whatever ended it (this worker, a cancel, recovery), once; a superseded worker's job
        # has not ended, or whoever ended it notified; a released one has not ended.
        if execution.webhook and ctx.stop_reason not in (SUPERSEDED, RELEASED):
            execution_ended_notify(execution_id=execution.pk)


# --- async targets, on the worker's event loop -------------------------------------------------------

RELEASED = "released"


class Released(Exception):
    """The worker stopped (a deploy) before the target ended: it goes back to the queue."""


def _is_async(execution: Execution) -> bool:
    """Whether the execution's target is ``async def`` (an agent, or a pipeline with such a step):
    it then runs on the worker's event loop, beside others, rather than holding the worker."""
    try:
        target = registry.get(execution.type, execution.target_id)
        if execution.type == ExecutionType.AGENT:
            return inspect.iscoroutinefunction(target.agent_function)
        steps = target.steps_for(target.validate_inputs(execution.inputs))
    except Exception:  # noqa: BLE001 a target or inputs the sync path reports as its failure
        return False
    return any(inspect.iscoroutinefunction(pipeline_step.function) for pipeline_step in steps)


class AsyncExecutionContext:
    """What an ``async def`` target sees as ``ctx``: ``ExecutionContext``'s calls, awaited (they
    write to the database in the worker's database thread, not on the event loop).

    A cancel stops the target at its current ``await`` (its task is cancelled: ``CancelledError``,
    re-raised after any cleanup) within ``EXECUTIONS_CANCEL_CHECK_INTERVAL``."""

    def __init__(self, ctx: ExecutionContext) -> None:
        self._ctx = ctx
        self.execution_id = ctx.execution_id
        self.inputs = ctx.inputs
        self.config = ctx.config

    async def progress(
        self, current_step: int | None = None, total_steps: int | None = None,
        step_name: str | None = None, percentage: float | None = None,
    ) -> None:
        await sync_to_async(self._ctx.progress)(current_step, total_steps, step_name, percentage)

    async def log(self, message: str, **data: Any) -> None:
        await sync_to_async(self._ctx.log)(message, **data)

    async def dependencies(self) -> dict[str, Any]:
        """``ExecutionContext.dependencies`` (read in the database thread): an async target awaits
        ``ctx.dependencies()``."""
        return await sync_to_async(lambda: self._ctx.dependencies)()

    @property
    def cancelled(self) -> bool:
        """True once the execution was cancelled or lost (the loop's watcher keeps this current)."""
        return self._ctx._cancelled.is_set()

    @property
    def stop_reason(self) -> str | None:
        return self._ctx._stop_reason if self.cancelled else None

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``; a cancel interrupts it like any await."""
        await asyncio.sleep(seconds)


async def _run_target_async(execution: Execution, ctx: ExecutionContext) -> Any:
    target = registry.get(execution.type, execution.target_id)
    inputs = target.validate_inputs(execution.inputs)
    actx = AsyncExecutionContext(ctx)
    if execution.type == ExecutionType.AGENT:
        return await cast(Callable[..., Any], target.agent_function)(inputs, actx)
    steps = target.steps_for(inputs)
    data: Any = inputs
    for index, pipeline_step in enumerate(steps, start=1):
        await actx.progress(current_step=index, total_steps=len(steps), step_name=pipeline_step.name)
        if inspect.iscoroutinefunction(pipeline_step.function):
            data = await pipeline_step.function(data, actx)
        else:  # a sync step of an async pipeline: in a thread of the loop's pool, with the sync ctx
            data = await sync_to_async(pipeline_step.function, thread_sensitive=False)(data, ctx)
    return data


class ExecutionWatch:
    """The one watcher of every async execution on an event loop: it reads their rows together
    every ``EXECUTIONS_CANCEL_CHECK_INTERVAL`` and cancels the task of each one cancelled or lost
    meanwhile (the heartbeats are ``Heartbeat``'s, as for every execution)."""

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ExecutionWatch] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.watched: dict[ExecutionContext, asyncio.Task] = {}
        self._task: asyncio.Task | None = None

    @classmethod
    def of_running_loop(cls) -> ExecutionWatch:
        loop = asyncio.get_running_loop()
        watch = cls._of_loop.get(loop)
        if watch is None:
            watch = cls._of_loop[loop] = cls()
        return watch

    def add(self, ctx: ExecutionContext, task: asyncio.Task) -> None:
        self.watched[ctx] = task
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch())

    def discard(self, ctx: ExecutionContext) -> None:
        self.watched.pop(ctx, None)

    async def _watch(self) -> None:
        read = sync_to_async(_claims_read)
        while self.watched:
            await asyncio.sleep(float(settings.EXECUTIONS_CANCEL_CHECK_INTERVAL))
            watched = dict(self.watched)
            try:
                rows = await read([ctx.execution_id for ctx in watched])
            except Exception:  # a failed read must not stop the watching; the next one may work
                logger.exception("cancel check of %d executions failed", len(watched))
                continue
            for ctx, task in watched.items():
                row = rows.get(ctx.execution_id)
                if row is None or row[0] != ExecutionStatus.RUNNING or not ctx._is_ours(row):
                    self.discard(ctx)
                    ctx._stop(ctx._reason_from(row))
                    task.cancel()
        self._task = None


def _claims_read(ids: list[UUID]) -> dict[UUID, tuple[str, str, int]]:
    """(status, worker, attempts) of each execution, by id."""
    try:
        return {
            pk: (status, worker, attempts)
            for pk, status, worker, attempts in Execution.objects.filter(pk__in=ids).values_list(
                "pk", "status", "worker", "attempts"
            )
        }
    except DatabaseFailure:
        connection.close()  # reconnect at the next read
        raise


async def _drive_async(execution: Execution, ctx: ExecutionContext, job: worker_loop.Job | None) -> Any:
    """The async target's outputs; raises what it raised, ``ExecutionCancelled`` once it was
    stopped, ``Released`` when its worker gave it back, ``TimeoutError`` past the time limit."""
    task = asyncio.create_task(_run_target_async(execution, ctx))
    if job is not None:
        def release() -> None:
            ctx._stop(RELEASED)
            task.cancel()

        job.release = release
    watch = ExecutionWatch.of_running_loop()
    watch.add(ctx, task)
    try:
        async with asyncio.timeout(float(settings.EXECUTIONS_TIMEOUT)):
            return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not ctx._cancelled.is_set():
            raise  # the loop itself is going away
        await asyncio.gather(task, return_exceptions=True)
        if ctx._stop_reason == RELEASED:
            raise Released() from None
        raise ExecutionCancelled() from None
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        watch.discard(ctx)


async def _execute_on_loop(
    execution: Execution, ctx: ExecutionContext, heartbeat: Heartbeat, job: worker_loop.Job
) -> str:
    """An async execution on the worker's loop, to its end; recorded in the database thread."""
    outputs: Any = None
    failure: BaseException | None = None
    try:
        outputs = await _drive_async(execution, ctx, job)
    except Exception as exc:  # noqa: BLE001 handed to _conclude, which records it as the sync path would
        failure = exc

    def produce() -> Any:
        if failure is not None:
            raise failure
        return outputs

    return await sync_to_async(_conclude)(execution, ctx, heartbeat, produce)


def _release(ctx: ExecutionContext, execution: Execution) -> str:
    """running -> pending, by a worker that stopped (a deploy) before the target ended: back in
    the queue at once, the attempt given back (``max_attempts`` is not used up by a deploy). Its
    fence still holds: the next claim names another worker."""
    released = _reconnecting(
        execution_transition,
        execution_id=ctx.execution_id,
        allowed=[ExecutionStatus.RUNNING],
        where=ctx.claim.holds(),
        event_type=ExecutionEventType.STATUS,
        event_data={
            "status": ExecutionStatus.PENDING, "reason": RELEASED, "worker": ctx.claim.worker,
            "attempt": ctx.claim.attempt,
        },
        status=ExecutionStatus.PENDING,
        heartbeat_at=None,
        worker="",
        attempts=F("attempts") - 1,
    )
    if not released:
        return _stopped(ctx)
    enqueue_execution(execution)
    return RELEASED
