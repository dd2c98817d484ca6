"""Fixtures of the runs tests: a real API server (uvicorn) and a real qcluster on the test DB."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT, Cluster, subprocess_env, wait_for

# The demo graphs given to the live server and workers as a langgraph.json, so the live tests also
# cover registration from a file the way a user's LangGraph project does it.
GRAPHS_CONFIG = ROOT / "tests" / "runs" / "langgraph.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`uvicorn project.asgi:application` on a free port, on the test database."""

    def __init__(self, **env: str) -> None:
        self.log_path = ROOT / "var" / f"uvicorn-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        # A free port is free when we ask, not necessarily when uvicorn binds it a second later:
        # another test process (an xdist sibling) may have taken it. Then try another.
        for _ in range(5):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
                 "--port", str(self.port), "--no-access-log"],
                cwd=ROOT,
                env=subprocess_env(**env),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self._wait_until_serving():
                return
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def _wait_until_serving(self) -> bool:
        """True once this process serves; False when another process held the port."""
        log_start = len(self.log())
        deadline = time.monotonic() + 30
        while True:
            log = self.log()[log_start:]
            # uvicorn says so once the port is bound: an /ok before that could be answered by
            # whichever server holds the port.
            if "Uvicorn running on" in log:
                try:
                    if httpx.get(f"{self.url}/ok", timeout=1).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
            if self.process.poll() is not None:
                if "address already in use" in log.lower():
                    return False
                raise RuntimeError(f"server did not start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@dataclass
class LiveStack:
    url: str
    api_key: str
    other_api_key: str
    server: Server
    cluster: Cluster


@pytest.fixture(scope="module")
def live_stack(django_db_setup) -> Iterator[tuple[Server, Cluster]]:
    """One server and one cluster for a whole test module (they hold no state between tests)."""
    server = Server(LANGGRAPH_CONFIG=str(GRAPHS_CONFIG))
    cluster = Cluster(workers=2, LANGGRAPH_CONFIG=str(GRAPHS_CONFIG))
    try:
        yield server, cluster
    finally:
        cluster.stop()
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


@pytest.fixture
def live(live_stack, transactional_db, make_user, request) -> Iterator[LiveStack]:
    """The module's server and cluster, and two users with API keys, committed for this test."""
    from accounts.models import api_key_create

    server, cluster = live_stack
    keys = [api_key_create(user=make_user(name))[1] for name in ("live", "other")]
    server_log_start, cluster_log_start = len(server.log()), len(cluster.log())
    yield LiveStack(server.url, keys[0], keys[1], server, cluster)
    _let_the_cluster_go_idle()
    if getattr(request.node, "call_failed", False):
        # A 500 seen by the client is only explained by the server's traceback: show what the
        # processes logged during this test in pytest's report.
        print("--- server log during the test ---\n" + server.log()[server_log_start:][-6000:])
        print("--- cluster log during the test ---\n" + cluster.log()[cluster_log_start:][-6000:])


def _let_the_cluster_go_idle() -> None:
    """Cancel what a test left pending or running and wait for the worker to let go of it: the
    database is flushed next, and on PostgreSQL a TRUNCATE beside a worker still writing a run's
    events deadlocks (seen with a run created at a test's end and never waited for)."""
    from runs.models import Run
    from runs.services import runs_cancel

    runs_cancel(runs=list(Run.objects.active()))
    wait_for(lambda: not Run.objects.active().exists(), timeout=15, message="the cluster to go idle")
