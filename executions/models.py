import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class ExecutionType(models.TextChoices):
    AGENT = "agent", "Agent"
    PIPELINE = "pipeline", "Pipeline"


class ExecutionStatus(models.TextChoices):
    """Where an execution is in its life.

    Transitions (``EXECUTION_TRANSITIONS``; ``executions.transitions`` makes each one a conditional
    UPDATE and refuses every other move)::

        pending  -> running     a worker claimed it (the claim: that worker, the attempt it counted)
        pending  -> cancelled   cancelled before any worker took it
        running  -> completed   the target returned
        running  -> failed      the target raised or timed out, or its worker was lost with no
                                attempts left
        running  -> cancelled   cancelled while running; the worker stops at its next check
        running  -> pending     the target failed and ``config.max_attempts`` allows another try
                                (claimed again after a backoff), or its worker was lost and
                                attempts remain (recovery requeues it)
        pending  -> failed      a dependency (``depends_on``) failed or was cancelled: it never
                                ran (``error.type`` = ``DependencyFailed``)

    A pending execution is claimed in ``priority`` order (higher first, oldest first within a
    priority) once it is not ``blocked`` by an unfinished dependency and its target's and its
    owner's concurrency limits leave room (``executions.scheduling``).

    completed, failed and cancelled are terminal: nothing changes them again.
    """

    PENDING = "pending", "Pending"
    """Created and queued (or waiting for its dependencies or a free slot); no worker has
    claimed it yet."""
    RUNNING = "running", "Running"
    """A worker claimed it and is running the target."""
    COMPLETED = "completed", "Completed"
    """The target returned; ``outputs`` holds what it returned."""
    FAILED = "failed", "Failed"
    """The target raised or timed out, or its worker was lost; ``error`` says why."""
    CANCELLED = "cancelled", "Cancelled"
    """Cancelled by a user before it finished."""

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.PENDING, cls.RUNNING)

    @classmethod
    def terminal(cls) -> tuple[str, ...]:
        return (cls.COMPLETED, cls.FAILED, cls.CANCELLED)

    @classmethod
    def sources(cls, target: str) -> tuple[str, ...]:
        """The statuses an execution may move to ``target`` from."""
        return _SOURCES.get(target, ())


# (from, to) of every move ExecutionStatus's docstring lists; any other move is refused.
EXECUTION_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (ExecutionStatus.PENDING, ExecutionStatus.RUNNING),
        (ExecutionStatus.PENDING, ExecutionStatus.CANCELLED),
        (ExecutionStatus.PENDING, ExecutionStatus.FAILED),
        (ExecutionStatus.RUNNING, ExecutionStatus.COMPLETED),
        (ExecutionStatus.RUNNING, ExecutionStatus.FAILED),
        (ExecutionStatus.RUNNING, ExecutionStatus.CANCELLED),
        (ExecutionStatus.RUNNING, ExecutionStatus.PENDING),
    }
)
_SOURCES: dict[str, tuple[str, ...]] = {
    target: tuple(sorted(source for source, to in EXECUTION_TRANSITIONS if to == target))
    for _, target in EXECUTION_TRANSITIONS
}


PRIORITY_MIN, PRIORITY_MAX = -10, 10


class ExecutionQuerySet(models.QuerySet):
    def active(self) -> "ExecutionQuerySet":
        return self.filter(status__in=ExecutionStatus.active())

    def terminal(self) -> "ExecutionQuerySet":
        return self.filter(status__in=ExecutionStatus.terminal())

    def owned_by(self, user) -> "ExecutionQuerySet":
        return self.filter(owner=user)

    def finished_before(self, moment: datetime) -> "ExecutionQuerySet":
        return self.terminal().filter(
            Q(completed_at__lt=moment) | Q(cancelled_at__lt=moment)
            | Q(completed_at__isnull=True, cancelled_at__isnull=True, created_at__lt=moment)
        )

    def stale(self, *, before: datetime) -> "ExecutionQuerySet":
        """Running rows whose worker has not beaten its heartbeat since ``before``."""
        return self.filter(status=ExecutionStatus.RUNNING, heartbeat_at__lt=before)


class Execution(models.Model):
    """One background run of a registered agent or pipeline. This row is the truth about it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="executions",
        help_text="Empty for executions started from the terminal without --user.",
    )
    type = models.CharField(max_length=16, choices=ExecutionType.choices)
    target_id = models.CharField(max_length=200)
    inputs = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.PENDING
    )
    blocked = models.BooleanField(
        default=False,
        help_text="Pending until every execution it depends on (depends_on) has completed.",
    )
    batch_id = models.UUIDField(
        null=True, blank=True, db_index=True,
        help_text="The POST /executions/batch request that created it, with its siblings.",
    )
    priority = models.SmallIntegerField(
        default=0,
        help_text=f"{PRIORITY_MIN} to {PRIORITY_MAX}: pending executions with a higher priority are "
        "claimed first; within a priority, the oldest first.",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    step_name = models.CharField(max_length=200, blank=True)
    percentage = models.FloatField(default=0.0)

    outputs = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)

    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the claiming worker.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Claims so far, counted at claim time.")
    requeued_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time recovery enqueued it again."
    )
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="A retry waiting for its backoff: not claimed before this."
    )
    idempotency_key = models.CharField(  # noqa: DJ001 NULL = no key: the partial unique index skips it
        max_length=255, null=True, blank=True
    )
    request_hash = models.CharField(
        max_length=64, blank=True, default="", editable=False,
        help_text="SHA-256 of the create request (path and body) that carried the key: the same "
        "key with another request is a conflict.",
    )
    webhook = models.CharField(
        max_length=2048, blank=True, default="",
        help_text="URL POSTed to when the execution ends (webhooks app); empty: none.",
    )
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    # SET_NULL: deleting a schedule keeps the executions it started.
    schedule = models.ForeignKey(
        "schedules.Schedule", on_delete=models.SET_NULL, null=True, blank=True,
        related_name="executions", help_text="The schedule whose firing started it, if any.",
    )
    # Last sequence number used in this execution's event stream; bumped in the same
    # transaction as each event insert, so writers never collide on (execution, seq).
    event_seq = models.PositiveIntegerField(default=0)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        # The id breaks ties between rows created in the same microsecond: pages (and cursors)
        # never repeat or skip a row.
        ordering = ["-created_at", "-id"]
        # Every filter and ordering of GET /api/v1/executions is scoped to the owner, so each index
        # starts with it and ends with the ordering (created_at, id): PostgreSQL reads a page off
        # the index, forwards or backwards, without sorting the owner's rows. The descending
        # NULLS LAST orderings of started_at / completed_at have PostgreSQL-only indexes
        # (migration 0007; SQLite cannot write NULLS LAST in an index and sorts NULLs first).
        indexes = [
            models.Index(fields=["owner", "created_at", "id"], name="execution_owner_created_id"),
            models.Index(
                fields=["owner", "status", "created_at", "id"], name="execution_owner_status_created"
            ),
            models.Index(
                fields=["owner", "target_id", "created_at", "id"], name="execution_owner_target_created"
            ),
            # ?status=pending&status=running: an IN list cannot follow (owner, status, created_at)
            # in created_at order; this small partial index can.
            models.Index(
                fields=["owner", "created_at", "id"],
                condition=Q(status__in=ExecutionStatus.active()),
                name="execution_owner_active_created",
            ),
            models.Index(
                fields=["owner", "priority", "created_at", "id"], name="execution_owner_priority"
            ),
            models.Index(fields=["owner", "started_at", "id"], name="execution_owner_started"),
            models.Index(fields=["owner", "completed_at", "id"], name="execution_owner_completed"),
            # The admin sees every owner's executions, newest first.
            models.Index(fields=["created_at", "id"], name="execution_created_id"),
            models.Index(fields=["status", "created_at"], name="execution_status_created"),
            models.Index(fields=["target_id", "-created_at"], name="execution_target_created"),
            # The claim walks this index in claiming order: it does not slow down as the queue
            # grows, and it holds only the rows still waiting.
            models.Index(
                F("priority").desc(), F("created_at").asc(), F("id").asc(),
                condition=Q(status="pending", blocked=False), name="execution_claim_order",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="execution_idempotency_key_unique",
            ),
            models.CheckConstraint(
                condition=Q(percentage__gte=0) & Q(percentage__lte=100),
                name="execution_percentage_0_100",
            ),
            models.CheckConstraint(
                condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(type__in=ExecutionType.values), name="execution_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=PRIORITY_MIN) & Q(priority__lte=PRIORITY_MAX),
                name="execution_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.target_id} {self.id}"

    @property
    def is_active(self) -> bool:
        return self.status in ExecutionStatus.active()

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.completed_at or self.cancelled_at
        if end is None:
            end = timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())


class ExecutionDependency(models.Model):
    """``downstream`` runs only after ``upstream`` completed (``depends_on``); if ``upstream`` fails
    or is cancelled, ``downstream`` does not run (``executions.dependencies``). Dependencies must
    exist when their dependent is created, so the graph has no cycles by construction."""

    upstream = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="downstream_links"
    )
    downstream = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="upstream_links"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["downstream", "upstream"], name="execution_dependency_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.upstream_id} -> {self.downstream_id}"


class ExecutionEventType(models.TextChoices):
    CREATED = "created", "Created"
    STATUS = "status", "Status changed"
    PROGRESS = "progress", "Progress"
    LOG = "log", "Log"
    WORKER_STOPPED = "worker_stopped", "Worker stopped"


class ExecutionEvent(models.Model):
    """Append-only timeline of one execution: status changes, progress steps and logs."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=32, choices=ExecutionEventType.choices)
    data = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["execution", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "seq"], name="execution_event_seq_unique")
        ]

    def __str__(self) -> str:
        return f"{self.execution_id} #{self.seq} {self.type}"
