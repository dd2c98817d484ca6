"""The scheduled prune: ``EXECUTIONS_RETENTION_DAYS`` kept, older finished executions deleted.

Every worker's sweeper (``executions.recovery``) calls ``executions_prune_expired`` each sweep
interval; it does nothing unless the setting is on, and then at most once every
``EXECUTIONS_RETENTION_INTERVAL`` seconds per process, deleting at most
``RETENTION_BATCHES_PER_SWEEP`` batches so that a backlog of millions never holds the sweep (and
the recovery it does) for long: the next runs finish the job. When nothing is due it costs one
index probe. Several workers pruning at once skip each other's rows.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from executions.services import executions_prune

RETENTION_BATCHES_PER_SWEEP = 20

_last_run: float | None = None


def executions_prune_expired() -> int:
    """Delete the finished executions older than ``EXECUTIONS_RETENTION_DAYS`` (0: keep all)."""
    global _last_run
    days = settings.EXECUTIONS_RETENTION_DAYS
    if not days:
        return 0
    now = time.monotonic()
    if _last_run is not None and now - _last_run < settings.EXECUTIONS_RETENTION_INTERVAL:
        return 0
    _last_run = now
    return executions_prune(
        older_than=timezone.now() - timedelta(days=days), max_batches=RETENTION_BATCHES_PER_SWEEP
    )
