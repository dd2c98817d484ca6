"""Tables of the LangGraph checkpoint saver (``checkpoints.saver.DjangoCheckpointSaver``).

Rows are written and read only through the saver; see its module docstring for the layout.
"""

from django.db import models
from django.utils import timezone


class Checkpoint(models.Model):
    """One LangGraph checkpoint: the full serialized state of a thread's namespace at one step."""

    thread_id = models.TextField()
    checkpoint_ns = models.TextField(default="", blank=True)
    # uuid6 strings from LangGraph: their text order is their creation order, which is what
    # "latest" and `before` rely on.
    checkpoint_id = models.TextField()
    # NULL, not "": a first checkpoint has no parent, and LangGraph's API says null.
    parent_checkpoint_id = models.TextField(null=True, blank=True)  # noqa: DJ001
    # Copied out of metadata["run_id"] so deleting a run's checkpoints (rollback) is an index scan.
    run_id = models.TextField(null=True, blank=True, db_index=True)  # noqa: DJ001  none: not a run's
    type = models.CharField(max_length=100, help_text="Serializer tag of `checkpoint`.")
    checkpoint = models.BinaryField()
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Also the index behind "latest checkpoint of a thread namespace" (equality on the
            # first two columns, backward scan on the third) and the `before` cursor.
            models.UniqueConstraint(
                fields=["thread_id", "checkpoint_ns", "checkpoint_id"],
                name="checkpoint_unique_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.thread_id}/{self.checkpoint_ns or '-'}/{self.checkpoint_id}"


class CheckpointWrite(models.Model):
    """A pending write of one task, made on top of a checkpoint before the next one exists."""

    thread_id = models.TextField()
    checkpoint_ns = models.TextField(default="", blank=True)
    checkpoint_id = models.TextField()
    task_id = models.TextField()
    # Position in the task's writes; special channels (errors, interrupts…) use fixed negative
    # slots from WRITES_IDX_MAP so a retry overwrites them instead of adding more.
    idx = models.IntegerField()
    channel = models.TextField()
    task_path = models.TextField(default="", blank=True)
    type = models.CharField(max_length=100, help_text="Serializer tag of `value`.")
    value = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Also the index used to load the writes of one checkpoint (its first three columns).
            models.UniqueConstraint(
                fields=["thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"],
                name="checkpoint_write_unique_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.thread_id}/{self.checkpoint_id} {self.task_id}[{self.idx}] {self.channel}"
