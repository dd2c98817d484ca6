"""The runs app's wiring: its recovery sweep and the crons' firing, and when the system
assistants are made.

Each registered graph has a system assistant (``runs.graphs.system_assistants_ensure``). Reads
never make them; they are made:

- after ``migrate`` (``post_migrate``, which ``flush`` sends too, so a test database has them);
- once when each process that serves the API or runs graphs starts: at a worker's spawn
  (django-q2's ``post_spawn``) and before an API process's first request (``request_started``,
  since Django has no start-up signal and ``AppConfig.ready`` must not query). That is where
  graphs added to ``RUNS_GRAPHS`` or ``langgraph.json`` since the last migrate appear, as they do
  on the real server, which makes them when it starts;
- by a run create that names a graph whose system assistant is missing (a write anyway).

Each call is one SELECT of the registered graphs' assistant ids when nothing is missing, and
idempotent (a concurrent process's INSERT is an IntegrityError it skips).
"""

from __future__ import annotations

import logging
import threading

from django.apps import AppConfig
from django.core.signals import request_started
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)

_started_lock = threading.Lock()
_started = False


def _create_system_assistants(sender: AppConfig, **kwargs: object) -> None:
    from runs.graphs import system_assistants_ensure

    system_assistants_ensure()


def system_assistants_at_start(**_signal_kwargs: object) -> None:
    """The system assistants of this process's graphs, made once per process. A failure (the
    database not reachable yet) is logged and the next request or spawn tries again."""
    global _started
    if _started:
        return
    from runs.graphs import system_assistants_ensure

    with _started_lock:
        if _started:
            return
        try:
            system_assistants_ensure()
        except Exception:
            logger.warning("could not create the system assistants; will try again", exc_info=True)
            return
        _started = True
    request_started.disconnect(dispatch_uid="runs-system-assistants-at-start")


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        post_migrate.connect(_create_system_assistants, sender=self, dispatch_uid="runs-system-assistants")
        request_started.connect(system_assistants_at_start, dispatch_uid="runs-system-assistants-at-start")

        from django_q.signals import post_spawn

        from executions.recovery import register_sweep, register_worker_reap
        from runs.recovery import runs_reap_worker, sweep
        from runs.services.crons import crons_fire_due
        from store.services import store_items_sweep_expired

        post_spawn.connect(system_assistants_at_start, dispatch_uid="runs-system-assistants-at-spawn")
        register_sweep(sweep)
        register_worker_reap(runs_reap_worker)
        register_sweep(store_items_sweep_expired)
        # Crons fire from the sweep: at most EXECUTIONS_SWEEP_INTERVAL late, from any worker.
        register_sweep(crons_fire_due)

        from django.conf import settings

        if settings.IS_WORKER:
            from runs.graphs import langgraph_preload

            langgraph_preload()
