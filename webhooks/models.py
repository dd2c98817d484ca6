"""Completion webhooks: one message per finished job, one record per attempt to deliver it.

The message row is the truth about a webhook, as the job row is about a job: the broker only
carries its id, and a message whose task was lost (or whose worker died mid-attempt) is found
again by the sweep through ``next_attempt_at``.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class WebhookSource(models.TextChoices):
    """What finished: the job a message reports on."""

    EXECUTION = "execution", "Execution"
    RUN = "run", "Run"


class WebhookStatus(models.TextChoices):
    """Where a message is in its life.

    Transitions::

        pending   -> delivered   an attempt got a 2xx answer
        pending   -> failed      the last allowed attempt failed, or the URL is refused
        delivered -> pending     redelivered by an operator
        failed    -> pending     redelivered by an operator
    """

    PENDING = "pending", "Pending"
    """Waiting for its next attempt at ``next_attempt_at`` (or an attempt is under way)."""
    DELIVERED = "delivered", "Delivered"
    """The receiver answered 2xx."""
    FAILED = "failed", "Failed"
    """Every allowed attempt failed; ``attempts`` holds why."""


class WebhookMessage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source = models.CharField(max_length=16, choices=WebhookSource.choices)
    source_id = models.UUIDField(help_text="The execution's or run's id.")
    url = models.CharField(max_length=2048)
    event_type = models.CharField(
        max_length=64, help_text="execution.completed|failed|cancelled, or the run's final status."
    )
    payload = models.JSONField(help_text="The body sent, made when the job ended.")
    allow_loopback = models.BooleanField(
        default=False, help_text="langgraph.json allowed loopback URLs when the run was created."
    )
    status = models.CharField(
        max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started so far.")
    max_attempts = models.PositiveIntegerField(help_text="Attempts allowed (grows on redeliver).")
    next_attempt_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the next attempt is due; while one runs, when it is presumed lost.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A job ends once: whoever records its end first makes its only message.
            models.UniqueConstraint(fields=["source", "source_id"], name="webhook_message_source_unique"),
            models.CheckConstraint(
                condition=Q(status__in=WebhookStatus.values), name="webhook_message_status_valid"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_message_due")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.source_id} -> {self.url}"

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` header: the same for every attempt, so receivers can deduplicate."""
        return f"msg_{self.id.hex}"


class WebhookAttempt(models.Model):
    """One attempt to deliver a message: what the receiver answered, or why nothing arrived."""

    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="deliveries")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    response = models.TextField(blank=True, help_text="The start of the response body.")

    class Meta:
        ordering = ["message", "number"]
        constraints = [
            models.UniqueConstraint(fields=["message", "number"], name="webhook_attempt_number_unique")
        ]

    def __str__(self) -> str:
        return f"{self.message_id} #{self.number}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
