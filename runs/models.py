"""Assistants, threads, runs and run events of the LangGraph-compatible API.

Checkpoints live in the ``checkpoints`` app (a LangGraph ``BaseCheckpointSaver`` on Django
models); a thread's graph state is read through it. The rows here are the truth about runs: the
broker only carries run ids.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
import uuid_utils
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


def uuid7() -> uuid.UUID:
    """Thread and run ids are UUIDv7 like the real server's: time-ordered, so ids sort by age."""
    return uuid.UUID(str(uuid_utils.uuid7()))


class RunStatus(models.TextChoices):
    """Where a run is in its life (the ``Run.status`` enum of langgraph-openapi.json).

    Every move (``RUN_TRANSITIONS``), each one conditional statement in ``runs.transitions``, the
    only place a run's status changes; every other move is refused::

        pending -> running       a worker claimed it (at most one running run per thread)
        pending -> interrupted   cancelled (action=interrupt) before a worker took it
        pending -> (deleted)     cancelled with action=rollback before a worker took it
        running -> success       the graph returned or paused on interrupt()/interrupt_before
        running -> error         the graph raised, or its worker was lost (the reaper)
        running -> timeout       the worker's time limit was hit
        running -> interrupted   cancelled (action=interrupt) or displaced by multitask interrupt
        running -> (deleted)     cancelled with action=rollback: its worker deletes it
        running -> pending       released by its worker stopping (a deploy) past its grace

    A rollback (cancel action or multitask strategy) deletes the run and its checkpoints instead
    of giving it a status. A running run goes back to pending only when its own worker releases
    it as it stops (``WORKER_GRACE_SECONDS``), deleting the checkpoints this attempt wrote in the
    same transaction, so that the next attempt applies its input to the thread once; a run whose
    worker was lost is not retried (what it wrote is unknown). A pending run whose queue message
    was lost is enqueued again without a status change. success, error, timeout and interrupted are
    terminal. Deleting a run or its thread (the API, operators) removes it in any status.
    """

    PENDING = "pending", "Pending"
    """Created and queued; waits for a worker and for the thread's active run to finish."""
    RUNNING = "running", "Running"
    """A worker is running the graph."""
    ERROR = "error", "Error"
    """The graph raised; ``error`` holds the exception class and message."""
    SUCCESS = "success", "Success"
    """The graph finished, or paused on an interrupt (the thread is then ``interrupted``)."""
    TIMEOUT = "timeout", "Timeout"
    """The run exceeded the worker's time limit."""
    INTERRUPTED = "interrupted", "Interrupted"
    """Cancelled by a user or by a newer run with multitask_strategy=interrupt."""

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.PENDING, cls.RUNNING)

    @classmethod
    def terminal(cls) -> tuple[str, ...]:
        return (cls.ERROR, cls.SUCCESS, cls.TIMEOUT, cls.INTERRUPTED)


# What a rollback makes of a run, in RUN_TRANSITIONS: it is deleted with its checkpoints.
RUN_DELETED = "(deleted)"

# (from, to) of every move RunStatus's docstring lists; any other move is refused.
RUN_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (RunStatus.PENDING, RunStatus.RUNNING),
        (RunStatus.PENDING, RunStatus.INTERRUPTED),
        (RunStatus.PENDING, RUN_DELETED),
        (RunStatus.RUNNING, RunStatus.SUCCESS),
        (RunStatus.RUNNING, RunStatus.ERROR),
        (RunStatus.RUNNING, RunStatus.TIMEOUT),
        (RunStatus.RUNNING, RunStatus.INTERRUPTED),
        (RunStatus.RUNNING, RUN_DELETED),
        (RunStatus.RUNNING, RunStatus.PENDING),
    }
)


class ThreadStatus(models.TextChoices):
    """The ``Thread.status`` enum of langgraph-openapi.json.

    A thread is ``busy`` from the moment a run is created on it until it has no pending or running
    run; then ``error`` if its last run raised, ``interrupted`` if its state has a next node (an
    interrupt or a cancel mid-step), else ``idle``.
    """

    IDLE = "idle", "Idle"
    """No active run and nothing left to do."""
    BUSY = "busy", "Busy"
    """A run is pending or running."""
    INTERRUPTED = "interrupted", "Interrupted"
    """Paused: the state has next nodes (interrupt(), interrupt_before/after, cancel mid-step)."""
    ERROR = "error", "Error"
    """The last run raised."""


class MultitaskStrategy(models.TextChoices):
    REJECT = "reject", "Reject"
    ROLLBACK = "rollback", "Rollback"
    INTERRUPT = "interrupt", "Interrupt"
    ENQUEUE = "enqueue", "Enqueue"


class CancelAction(models.TextChoices):
    INTERRUPT = "interrupt", "Interrupt"
    ROLLBACK = "rollback", "Rollback"


class OwnedQuerySet(models.QuerySet):
    def owned_by(self, user) -> OwnedQuerySet:
        return self.filter(owner=user)


class IdempotentCreate(models.Model):
    """An object whose create request may carry an ``Idempotency-Key``: a retry with the same key
    from the same owner gets this object back instead of a second one. A partial unique index on
    (owner, idempotency_key) makes that hold for concurrent retries too."""

    # Up to 255 characters from the header, plus "/batch/<n>" for the runs of a batch.
    idempotency_key = models.CharField(  # noqa: DJ001 NULL = no key: the partial unique index skips it
        max_length=300, null=True, blank=True, editable=False
    )
    request_hash = models.CharField(
        max_length=64, blank=True, default="", editable=False,
        help_text="SHA-256 of the create request (path and body) that carried the key: the same "
        "key with another request is a conflict.",
    )

    class Meta:
        abstract = True


class AssistantQuerySet(OwnedQuerySet):
    def visible_to(self, user) -> AssistantQuerySet:
        """A user's own assistants and the system ones (one per registered graph)."""
        return self.filter(Q(owner=user) | Q(owner__isnull=True))


class Assistant(IdempotentCreate):
    """A graph with a configuration. ``owner`` is empty for the system assistant of each graph."""

    assistant_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="assistants",
        help_text="Empty for system assistants, which every user sees.",
    )
    graph_id = models.CharField(max_length=200)
    name = models.CharField(max_length=500, default="Untitled")
    # The API's description is null when none was given, which is not "".
    description = models.TextField(null=True, blank=True)  # noqa: DJ001
    config = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = AssistantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="assistant_owner_created"),
            models.Index(fields=["graph_id"], name="assistant_graph"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="assistant_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.graph_id})"

    @property
    def is_system(self) -> bool:
        return self.owner_id is None


class AssistantVersion(models.Model):
    """One saved configuration of an assistant; every PATCH adds one and makes it current."""

    assistant = models.ForeignKey(Assistant, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    graph_id = models.CharField(max_length=200)
    name = models.CharField(max_length=500)
    # The API's description is null when none was given, which is not "".
    description = models.TextField(null=True, blank=True)  # noqa: DJ001
    config = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["assistant", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["assistant", "version"], name="assistant_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.assistant_id} v{self.version}"


class ThreadQuerySet(OwnedQuerySet):
    def inactive_since(self, moment: datetime) -> ThreadQuerySet:
        """Threads not updated since ``moment``, with no pending or running run and no cron (a
        monthly cron's thread is quiet between its runs, not abandoned)."""
        return self.filter(updated_at__lt=moment, crons__isnull=True).exclude(
            runs__status__in=RunStatus.active()
        )


class Thread(IdempotentCreate):
    """A conversation: a sequence of runs sharing checkpointed state.

    The row also serves as the per-thread lock: run creation and run completion take it
    (``select_for_update``) so multitask decisions and the thread status are race-free.
    """

    thread_id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lg_threads"
    )
    metadata = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=ThreadStatus.choices, default=ThreadStatus.IDLE
    )
    # A copy of the latest checkpoint's values and interrupts, refreshed when a run ends or the
    # state is updated, so thread reads and searches need not deserialize checkpoints.
    values = models.JSONField(null=True, blank=True)
    # What ``status`` becomes when no run is pending or running (idle, interrupted or error).
    resting_status = models.CharField(
        max_length=16, choices=ThreadStatus.choices, default=ThreadStatus.IDLE
    )
    interrupts = models.JSONField(default=dict, blank=True)
    error = models.JSONField(null=True, blank=True)
    has_run = models.BooleanField(
        default=False, help_text="Threads show error/interrupts only after their first run."
    )
    temporary = models.BooleanField(
        default=False, help_text="Created by a stateless run; deleted when that run ends."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    state_updated_at = models.DateTimeField(default=timezone.now)

    objects = ThreadQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # threads/search is scoped to the owner and sorted by created_at (default), updated_at or
        # state_updated_at, then thread_id: each index serves one order, forwards or backwards.
        # Its metadata filter uses a PostgreSQL-only GIN index (migration 0006).
        indexes = [
            models.Index(fields=["owner", "created_at", "thread_id"], name="thread_owner_created_id"),
            models.Index(fields=["owner", "updated_at", "thread_id"], name="thread_owner_updated_id"),
            models.Index(
                fields=["owner", "state_updated_at", "thread_id"], name="thread_owner_state_updated"
            ),
            models.Index(
                fields=["owner", "status", "created_at", "thread_id"], name="thread_owner_status_created"
            ),
            # The admin lists every owner's threads, newest first.
            models.Index(fields=["created_at", "thread_id"], name="thread_created_id"),
            models.Index(fields=["status"], name="thread_status"),
            models.Index(fields=["updated_at"], name="thread_updated"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ThreadStatus.values), name="thread_status_valid"
            ),
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="thread_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return str(self.thread_id)


class RunQuerySet(OwnedQuerySet):
    def active(self) -> RunQuerySet:
        return self.filter(status__in=RunStatus.active())

    def stale(self, *, before: datetime) -> RunQuerySet:
        """Running rows whose worker has not beaten its heartbeat since ``before``."""
        return self.filter(status=RunStatus.RUNNING, heartbeat_at__lt=before)


class Run(IdempotentCreate):
    """One execution of an assistant's graph on a thread. This row is the truth about it."""

    run_id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="runs")
    assistant = models.ForeignKey(Assistant, on_delete=models.CASCADE, related_name="runs")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lg_runs"
    )
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    metadata = models.JSONField(default=dict, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    multitask_strategy = models.CharField(
        max_length=16, choices=MultitaskStrategy.choices, default=MultitaskStrategy.ENQUEUE
    )
    # For a delayed run (after_seconds) this is in the future, as on the real server; workers
    # take pending runs in created_at order once it has passed.
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the claiming worker.")
    attempts = models.PositiveIntegerField(default=0)
    cancel_action = models.CharField(
        max_length=16, choices=CancelAction.choices, blank=True, default="",
        help_text="Set on a running run to ask its worker to stop.",
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # The body of /wait and /join: last values chunk (+ __interrupt__) or {"__error__": ...}.
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    on_completion = models.CharField(
        max_length=8, blank=True, default="",
        help_text="For stateless runs: 'delete' removes the temporary thread when the run ends.",
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["thread", "status", "created_at"], name="run_thread_status_created"),
            models.Index(fields=["owner", "-created_at"], name="run_owner_created"),
            models.Index(fields=["status", "created_at"], name="run_status_created"),
            # The per-user cap on active runs counts these.
            models.Index(fields=["owner", "status"], name="run_owner_status"),
            # The admin lists every owner's runs, newest first.
            models.Index(fields=["created_at", "run_id"], name="run_created_id"),
        ]
        constraints = [
            # The database, not the code, guarantees that a thread runs one graph at a time.
            models.UniqueConstraint(
                fields=["thread"],
                condition=Q(status=RunStatus.RUNNING),
                name="run_one_running_per_thread",
            ),
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="run_status_valid"),
            models.CheckConstraint(
                condition=Q(multitask_strategy__in=MultitaskStrategy.values),
                name="run_multitask_strategy_valid",
            ),
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="run_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return str(self.run_id)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())


class DiscardedRun(models.Model):
    """What is left of a stateless run with an ``Idempotency-Key`` once its temporary thread was
    deleted (and the run with it): enough for a retry with that key to get the run and its
    result rather than start the graph again."""

    run_id = models.UUIDField(primary_key=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    thread_id = models.UUIDField(editable=False)
    idempotency_key = models.CharField(max_length=300, editable=False)
    request_hash = models.CharField(max_length=64, editable=False)
    run = models.JSONField(help_text="The run as the API showed it last.")
    result = models.JSONField(null=True, blank=True, help_text="What /wait answered.")
    discarded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"], name="discarded_run_idempotency_key_unique"
            ),
        ]
        indexes = [models.Index(fields=["discarded_at"], name="discarded_run_discarded_at")]

    def __str__(self) -> str:
        return f"{self.run_id} (discarded)"

    # A run's fields a DiscardedRun does not keep in ``run``: its result is ``result``.
    _NOT_KEPT = frozenset({"result"})

    @classmethod
    def kept_values(cls, run: Run) -> dict[str, Any]:
        """What ``run`` keeps of a run: its fields' values by attname, as JSON (``as_run`` reads
        them back), so that the API shows the run as its serializer shows any run."""
        values: dict[str, Any] = {}
        for field in Run._meta.concrete_fields:
            if field.name in cls._NOT_KEPT:
                continue
            value = field.value_from_object(run)
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            values[field.attname] = value
        return values

    def as_run(self) -> Run:
        """The run as it was when its thread went (unsaved: its rows are gone). Rows stored before
        ``kept_values`` held the API's body of the run, whose keys are fields too."""
        values = {}
        for field in Run._meta.concrete_fields:
            if field.attname in self.run:
                value = self.run[field.attname]
                values[field.attname] = None if value is None else field.to_python(value)
        return Run(**values)


class RunEvent(models.Model):
    """One event of a run's stream, in the order produced: what an SSE client receives.

    ``data`` is the event's ``data:`` line, compact JSON exactly as sent, so a replay after
    ``Last-Event-ID`` is byte-identical to the live stream (a JSON column would not be: PostgreSQL's
    jsonb reorders keys). The primary key is the SSE event id (see ``runs.streams``): one worker
    writes a thread's runs one after another, so ids grow along a run and along a thread.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    event = models.CharField(max_length=200)
    data = models.TextField(default="null")
    thread_only = models.BooleanField(
        default=False,
        help_text="Sent on the thread stream only (the run_done marker), not on the run's stream.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="run_event_seq_unique")]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.seq} {self.event}"

    @property
    def payload(self) -> Any:
        """``data`` decoded."""
        return orjson.loads(self.data)


class CronQuerySet(OwnedQuerySet):
    def due(self, *, now: datetime) -> CronQuerySet:
        """Enabled crons whose next firing time has come."""
        return self.filter(enabled=True, next_run_date__lte=now)


class Cron(models.Model):
    """A schedule of runs (the Agent Server's crons): on ``thread`` with the thread's multitask
    rules, or, without a thread, on a new thread each time (``on_run_completed`` says whether that
    thread is deleted once the run ends).

    ``next_run_date`` is the next firing time (UTC; computed in ``timezone``), null once
    ``end_time`` has passed. A firing moves it on with one conditional UPDATE naming the time it
    read, and records a ``CronFiring`` unique on (cron, time): whatever the number of workers
    sweeping, each time fires once. Firing times missed while no worker ran are not caught up one
    by one: the first sweep after fires once and moves on to the next time after now.
    """

    cron_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lg_crons")
    assistant = models.ForeignKey(Assistant, on_delete=models.CASCADE, related_name="crons")
    thread = models.ForeignKey(
        Thread, on_delete=models.CASCADE, null=True, blank=True, related_name="crons",
        help_text="Empty for a stateless cron, which makes a new thread for each run.",
    )
    schedule = models.CharField(max_length=200, help_text="Five-field cron expression.")
    end_time = models.DateTimeField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True, help_text="The body of each run it creates.")
    metadata = models.JSONField(default=dict, blank=True)
    on_run_completed = models.CharField(
        max_length=8, blank=True, default="",
        help_text="Stateless crons: 'delete' (the default) or 'keep' each run's thread.",
    )
    enabled = models.BooleanField(default=True)
    next_run_date = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # Last: the name hides django.utils.timezone in the rest of the class body.
    timezone = models.CharField(
        max_length=64, blank=True, default="", help_text="IANA name the schedule is read in; empty is UTC."
    )

    objects = CronQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The sweep's query, every few seconds on every worker.
            models.Index(fields=["enabled", "next_run_date"], name="cron_due"),
            models.Index(fields=["owner", "-created_at"], name="cron_owner_created"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(on_run_completed__in=("", "delete", "keep")), name="cron_on_run_completed_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cron_id} ({self.schedule})"


class CronFiring(models.Model):
    """One firing of a cron: the run it created, or why it created none (the thread's
    ``reject`` strategy while a run was active, the active-runs cap, ...)."""

    cron = models.ForeignKey(Cron, on_delete=models.CASCADE, related_name="firings")
    scheduled_for = models.DateTimeField(help_text="The firing time the schedule named.")
    fired_at = models.DateTimeField(default=timezone.now)
    # Not foreign keys: a stateless run goes with its thread, and deleting either keeps the record.
    run_id = models.UUIDField(null=True, blank=True)
    thread_id = models.UUIDField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-scheduled_for"]
        constraints = [
            models.UniqueConstraint(fields=["cron", "scheduled_for"], name="cron_firing_once"),
        ]

    def __str__(self) -> str:
        return f"{self.cron_id} @ {self.scheduled_for.isoformat()}"
