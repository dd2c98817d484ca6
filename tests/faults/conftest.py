"""Fixtures of the fault and load suite: live servers, shared-service restarts, process checks.

These tests kill real processes and restart the machine's PostgreSQL and Redis (the commands of
/work/shared/services.md), so they run only in `make test-slow`. Every restart is undone in a
``finally`` block and waits until the service accepts connections again.

The broker queue is named by ``Q_CLUSTER_NAME``: the test process and every cluster it starts
inherit it, so give a run its own name (``.ci/run`` does) when other test runs share the Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from django.conf import settings
from django.db import connection

from executions.registry import agent, registry
from tests.conftest import ROOT, subprocess_env
from tests.conftest import figure as figure  # the fault tests import it from here
from tests.faults.silent import SILENT_SLEEP, silent_sleep
from tests.runs.conftest import free_port

ON_POSTGRES_AND_REDIS = (
    settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and bool(settings.REDIS_URL)
)
needs_postgres_and_redis = pytest.mark.skipif(
    not ON_POSTGRES_AND_REDIS,
    reason="fault test for PostgreSQL + Redis: set DATABASE_URL=postgres://… and REDIS_URL=redis://… "
    "(the PostgreSQL + Redis pass of .ci/run does)",
)

# --- processes ----------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def worker_pid(worker: str) -> int:
    """The pid in a row's ``worker`` field (``host:pid``)."""
    return int(worker.rsplit(":", 1)[1])


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


class Server:
    """`uvicorn project.asgi:application` on a free port and the test database.

    Like ``tests.runs.conftest.Server``, with uvicorn's ``--workers`` and a wait that tolerates a
    slow start under load.
    """

    def __init__(self, *, workers: int = 1, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ROOT / "var" / f"uvicorn-faults-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # the server writes to it until stop()
        command = [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
                   "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=subprocess_env(**env), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def errors(self, limit: int = 6000) -> str:
        """The log without Django's one-line warnings about 4xx answers: tracebacks and the like."""
        lines = [line for line in self.log().splitlines()
                 if not line.startswith(("Conflict:", "Not Found:", "Bad Request:", "Too Many Requests:"))]
        return "\n".join(lines)[:limit]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        self.log_path.unlink(missing_ok=True)


def wait_for_log(read_log: Callable[[], str], text: str, count: int, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while read_log().count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {count}× {text!r} in:\n{read_log()[-5000:]}")
        time.sleep(0.1)


def reconnect_test_process() -> None:
    """Forget the test process's database connections after their sessions were killed.

    Django's pool keeps idle connections and, without CONN_HEALTH_CHECKS, hands out dead ones; a
    test that ends sessions must call this before pytest-django's teardown (the flush) runs.
    """
    connection.close()
    if hasattr(connection, "close_pool"):  # PostgreSQL
        connection.close_pool()


@pytest.fixture
def silent_sleep_registered() -> Iterator[None]:
    """The agent of ``tests.faults.silent`` in this process too, so the API accepts it."""
    agent(SILENT_SLEEP)(silent_sleep)
    try:
        yield
    finally:
        registry.unregister("agent", SILENT_SLEEP)


# --- shared services ----------------------------------------------------------------------------

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]


def _redis_address() -> tuple[str, int]:
    url = urlparse(settings.REDIS_URL)
    return url.hostname or "127.0.0.1", url.port or 6379


def redis_ping() -> bool:
    host, port = _redis_address()
    result = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), "ping"], check=False, capture_output=True, text=True, timeout=5
    )
    return result.stdout.strip() == "PONG"


def redis_ensure_running(*, timeout: float = 30) -> None:
    """Start the machine's Redis if it is down, and wait until it answers."""
    if redis_ping():
        return
    subprocess.run(REDIS_START, check=False, capture_output=True, timeout=10)
    deadline = time.monotonic() + timeout
    while not redis_ping():
        if time.monotonic() > deadline:
            raise RuntimeError("Redis did not come back: start it with " + " ".join(REDIS_START))
        time.sleep(0.1)


def redis_restart_without_persistence() -> float:
    """``SHUTDOWN NOSAVE`` then start again: every key (every queued message) is gone.

    Returns how long Redis was unavailable, in seconds.
    """
    host, port = _redis_address()
    started = time.monotonic()
    subprocess.run(["redis-cli", "-h", host, "-p", str(port), "shutdown", "nosave"],
                   check=False, capture_output=True, timeout=10)
    deadline = time.monotonic() + 10
    while redis_ping():
        if time.monotonic() > deadline:
            raise RuntimeError("Redis did not shut down")
        time.sleep(0.05)
    redis_ensure_running()
    return time.monotonic() - started


@pytest.fixture
def restartable_redis() -> Iterator[None]:
    """Skip unless the configured Redis is the machine's own one; leave it running afterwards."""
    host, port = _redis_address()
    if host not in ("127.0.0.1", "localhost", "::1") or port != 6379 or not shutil.which("redis-server"):
        pytest.skip("restarts only the local Redis of /work/shared/services.md (127.0.0.1:6379)")
    try:
        yield
    finally:
        redis_ensure_running()


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    return versions[-1] if versions else ""


def pg_ready() -> bool:
    db = settings.DATABASES["default"]
    result = subprocess.run(
        ["pg_isready", "-q", "-h", db.get("HOST") or "127.0.0.1", "-p", str(db.get("PORT") or 5432)],
        check=False, capture_output=True, timeout=10,
    )
    return result.returncode == 0


def pg_wait_ready(*, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pg_ready():
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not come back")
        time.sleep(0.05)


def pg_ctlcluster(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", action],
        check=False, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def restartable_postgres() -> Iterator[None]:
    """Skip unless the database is the machine's own PostgreSQL; leave it running afterwards."""
    db = settings.DATABASES["default"]
    if (db.get("HOST") or "127.0.0.1") not in ("127.0.0.1", "localhost") or not _pg_version() \
            or not shutil.which("pg_ctlcluster"):
        pytest.skip("restarts only the local PostgreSQL of /work/shared/services.md")
    try:
        yield
    finally:
        if not pg_ready():
            pg_ctlcluster("start")
        pg_wait_ready()
