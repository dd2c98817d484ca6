"""Start the ASGI server and a django-q2 worker cluster as one foreground process group."""

import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run uvicorn (project.asgi:application) and `manage.py qcluster` together; Ctrl-C stops both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="serve the API and admin only")

    def handle(self, *args, host: str, port: int, no_worker: bool, **options) -> None:
        commands = [
            [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", host,
             "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "5"],
        ]
        if not no_worker:
            commands.append([sys.executable, "manage.py", "qcluster"])
        children = [subprocess.Popen(command) for command in commands]
        self.stdout.write(f"Serving on http://{host}:{port}/ (admin at /admin/, API docs at /api/docs/)")

        def stop(signum: int = signal.SIGTERM, frame=None) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            # Either child dying ends the group: a platform without its worker would queue forever.
            while all(child.poll() is None for child in children):
                time.sleep(0.2)
        finally:
            stop()
            deadline = time.monotonic() + 15
            for child in children:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
