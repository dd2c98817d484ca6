"""Start the ASGI server and a django-q2 worker cluster together; Ctrl-C stops both, and leaves
no process behind.

Each child runs in a process group of its own: the cluster's sentinel and workers are in the
cluster's. Ctrl-C (SIGINT to the terminal's foreground group) reaches ``serve`` alone, which asks
each child to stop; the cluster drains its jobs in flight for ``WORKER_GRACE_SECONDS``. Whatever
of a child's group is still there after that (and a few seconds more), or at a second Ctrl-C, is
killed, group and all: once ``serve`` has exited, no worker of it runs on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from project.telemetry import multiprocess_files_clean

# Beyond the cluster's grace, how long its release of what is left may take before it is killed.
RELEASE_MARGIN = 10.0
# How long uvicorn gets to close its connections (its own --timeout-graceful-shutdown is 5 s).
SERVER_STOP = 8.0


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL to every process still in the child's group (its own: ``process_group=0``)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left of it


class Command(BaseCommand):
    help = "Run uvicorn (project.asgi:application) and `manage.py qcluster` together; Ctrl-C stops both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="serve the API and admin only")

    def handle(self, *args, host: str, port: int, no_worker: bool, **options) -> None:
        # The counters of the last run start again from zero, as Prometheus expects of a restart;
        # the files of processes still running (another instance on this DATA_DIR) stay.
        multiprocess_files_clean(settings.PROMETHEUS_MULTIPROC_DIR, dead_only=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", host,
             "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "5",
             # Django has no lifespan handler; uvicorn's probe of one only logs a warning.
             "--lifespan", "off"],
            process_group=0,
        )
        children = [(server, "the server", SERVER_STOP)]
        if not no_worker:
            cluster = subprocess.Popen([sys.executable, "manage.py", "qcluster"], process_group=0)
            children.append((cluster, "the worker cluster", float(settings.WORKER_GRACE_SECONDS) + RELEASE_MARGIN))
        self.stdout.write(f"Serving on http://{host}:{port}/ (admin at /admin/, API docs at /api/docs/)")

        stopping: list[int] = []

        def stop(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
            if stopping and signum == signal.SIGINT:
                # A second Ctrl-C: no more waiting.
                self.stderr.write("Killing the server and the workers now.")
                for child, _, _ in children:
                    _kill_group(child)
                return
            stopping.append(signum)
            for child, _, _ in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            # Either child dying ends the group: a platform without its worker would queue forever.
            while all(child.poll() is None for child, _, _ in children):
                time.sleep(0.2)
        finally:
            if not stopping:
                stop()
            started = time.monotonic()
            for child, name, allowed in children:
                try:
                    child.wait(timeout=max(0.1, started + allowed - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.stderr.write(f"{name} did not stop within {allowed:.0f} s: killed")
                # Gone or not, what is left of its group goes too (a sentinel or a worker whose
                # parent was killed would run on, orphaned).
                _kill_group(child)
                child.wait()
