"""Fixtures shared by every test: users with API keys, API clients, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import api_key_create

ROOT = Path(__file__).resolve().parent.parent


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

    def stop(self) -> None:
        if self.process.poll() is None:
            # Only the cluster's main process: it stops its workers itself; signalling the whole
            # group at once makes the sentinel wait on workers that are already gone.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
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


def wait_for(predicate: Callable[[], object], *, timeout: float = 20.0, interval: float = 0.05, message: str = ""):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


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
