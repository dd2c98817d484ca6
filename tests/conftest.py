"""Fixtures shared by every test: users with API keys, API clients, and real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import api_key_create
from project.telemetry import multiprocess_files_clean

ROOT = Path(__file__).resolve().parent.parent


# --- xdist: what each worker needs of its own ------------------------------------------------------


def worker_environment(worker_id: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that keep one xdist worker (and the servers and clusters it starts) apart
    from the others. pytest-django already gives each its own test database.

    - ``DATA_DIR``: the SQLite test database, the local wake-up sockets (a wake-up sent to
      another worker's sockets is wasted work) and the secret key.
    - ``Q_CLUSTER_NAME``: on Redis the broker's queue is named by it; two workers' clusters on
      one name take each other's tasks, whose rows are in the other worker's database.
    - ``REDIS_URL``'s database: the cache holds counters keyed by user id (create throttle, open
      streams), and every worker's test database numbers its users from 1.
    """
    number = int(worker_id.removeprefix("gw"))
    data_dir = Path(environ.get("DATA_DIR") or ROOT / "var") / f"xdist-{worker_id}"
    env = {
        "DATA_DIR": str(data_dir),
        "Q_CLUSTER_NAME": f"{environ.get('Q_CLUSTER_NAME') or 'agentjobs'}-{worker_id}",
        # Else inherited from the controller, whose settings set it to its own DATA_DIR's.
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "prometheus"),
    }
    if environ.get("LOCAL_WAKEUPS_DIR"):  # empty turns them off: keep that
        env["LOCAL_WAKEUPS_DIR"] = str(Path(environ["LOCAL_WAKEUPS_DIR"]) / f"xdist-{worker_id}")
    if environ.get("REDIS_URL"):
        url = urlsplit(environ["REDIS_URL"])
        database = int(url.path.strip("/") or 0) + number
        if database > 15:
            raise pytest.UsageError(
                f"xdist worker {worker_id} needs Redis database {database}: Redis has 16 "
                "(0-15) unless configured otherwise; run fewer workers (-n) or start from a "
                "lower database in REDIS_URL"
            )
        env["REDIS_URL"] = urlunsplit(url._replace(path=f"/{database}"))
    return env


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list) -> None:
    # execnet sets a spec's env in the worker before pytest starts there, so settings (read once,
    # when pytest-django sets Django up, before any conftest hook of the worker runs) and every
    # process the worker starts see them.
    for spec in specs:
        spec.env.update(worker_environment(spec.id, os.environ))


class FewRoundsPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's hasher with 1,000 rounds instead of a million: hashing a test user's password
    took 0.3 s, paid by every test that makes a user (Django's advice for test suites). Its hashes
    are ordinary ``pbkdf2_sha256`` ones, so a server started by a test logs such a user in."""

    iterations = 1000


def pytest_configure(config: pytest.Config) -> None:
    override_settings(PASSWORD_HASHERS=[f"{__name__}.FewRoundsPBKDF2PasswordHasher"]).enable()
    # Every process a session starts leaves its metric files; a scrape reads them all.
    multiprocess_files_clean(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), dead_only=True)
    _flush_retries_a_deadlock()


def _flush_retries_a_deadlock() -> None:
    """After a transactional test the database is flushed (TRUNCATE) while the servers and
    clusters the test started may still be writing (a webhook's retry, a run's last events). On
    PostgreSQL the two can deadlock; it aborts one of them, and the flush is simply tried again."""
    from django.db import OperationalError
    from django.db.backends.base.operations import BaseDatabaseOperations

    flush = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self: BaseDatabaseOperations, sql_list: list[str]) -> None:
        for attempt in range(1, 6):
            try:
                return flush(self, sql_list)
            except OperationalError as exc:
                if "deadlock detected" not in str(exc) or attempt == 5:
                    raise
                time.sleep(0.1 * attempt)

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]


@pytest.fixture
def make_user(django_user_model) -> Callable:
    def make(username: str, *, staff: bool = False):
        return django_user_model.objects.create_user(
            username=username, password="pw", is_staff=staff, is_superuser=staff
        )

    return make


@pytest.fixture
def make_client() -> Callable[..., APIClient]:
    """An API client that authenticates with a fresh API key of ``user``."""

    def make(user, *, bearer: bool = False) -> APIClient:
        _, raw_key = api_key_create(user=user)
        client = APIClient()
        if bearer:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        else:
            client.credentials(HTTP_X_API_KEY=raw_key)
        client.raw_key = raw_key
        return client

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def api(alice, make_client) -> APIClient:
    return make_client(alice)


@pytest.fixture
def bob_api(bob, make_client) -> APIClient:
    return make_client(bob)


def database_url_for_subprocess() -> str:
    """The URL of the database this test runs against, for processes we start."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    user = settings_dict.get("USER") or ""
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_for_subprocess()
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


class Cluster:
    """A real `manage.py qcluster` process on the test database."""

    def __init__(self, workers: int = 2, **env: str) -> None:
        self.log_path = ROOT / "var" / f"qcluster-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=subprocess_env(Q_WORKERS=str(workers), **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, grace: float = 20) -> None:
        """SIGTERM, and after ``grace`` seconds SIGKILL: a worker finishes its task first."""
        if self.process.poll() is None:
            # Only the cluster's main process: it stops its workers itself; signalling the whole
            # group at once makes the sentinel wait on workers that are already gone.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        self.process.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def qcluster(transactional_db) -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 20.0, interval: float = 0.05,
    message: str | Callable[[], str] = "",
):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``,
    with ``message`` (called then, when it is a function: a log read at the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout}s waiting for {said or predicate}")
        time.sleep(interval)


def streams_watching() -> int:
    """How many event-hub watchers this process has open: a stream view registers one before its
    first database read, so once this is non-zero the stream follows what comes next."""
    from project.realtime import event_hub

    return sum(hub.open_watchers for hub in list(event_hub._hubs.values()))


async def until(predicate: Callable[[], object], *, timeout: float = 10.0, message: str = "") -> None:
    """``wait_for`` inside an event loop: polls without blocking the loop's other tasks."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout}s waiting for {said or predicate}")
        await asyncio.sleep(0.01)


# --- figures ------------------------------------------------------------------------------------

FIGURES: list[str] = []


def figure(text: str) -> None:
    """A measured figure, printed in pytest's terminal summary (the issues ask for each)."""
    FIGURES.append(text)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if FIGURES:
        terminalreporter.section("fault and load figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
