"""PostgreSQL restarted under load: errors only around the restart, no acknowledged job lost.

Two client threads keep creating executions through a live API server (uvicorn, two processes,
Django's connection pool) while a qcluster of four workers runs them; PostgreSQL is restarted
(``pg_ctlcluster … restart``: a fast shutdown that ends every session, then a start) in the
middle. Nothing is restarted by hand afterwards. A second API server, idle during the restart,
is asked afterwards too: its pooled connections died with the database while nobody used them,
and Django's pool only checks a connection before handing it out when CONN_HEALTH_CHECKS is on.

Timeouts shortened through the environment: heartbeat every 2 s, a running job without one for
10 s is requeued (default 30 s), stranded pending rows re-enqueued after 10 s (default 30 s),
sweeps every 2 s (default 5 s).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest
from django.db import DatabaseError

from accounts.models import api_key_create
from executions.models import Execution, ExecutionStatus
from tests.conftest import Cluster
from tests.faults.conftest import (
    Server,
    figure,
    needs_postgres_and_redis,
    pg_ctlcluster,
    pg_wait_ready,
    process_alive,
    reconnect_test_process,
    wait_for_log,
)

pytestmark = [pytest.mark.slow, pytest.mark.live, needs_postgres_and_redis, pytest.mark.django_db(transaction=True)]

ERROR_WINDOW = 5.0  # seconds after PostgreSQL accepts connections again, from the issue
LOAD_BEFORE = 6.0
LOAD_AFTER = 14.0
CLUSTER_ENV = {
    "EXECUTIONS_HEARTBEAT_INTERVAL": "2",
    "EXECUTIONS_HEARTBEAT_TIMEOUT": "10",
    "EXECUTIONS_REQUEUE_AFTER": "10",
    "EXECUTIONS_SWEEP_INTERVAL": "2",
    "LOG_LEVEL": "INFO",
}
BODIES = [
    {"type": "agent", "target_id": "echo", "inputs": {"n": 1}},
    {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 1}},
    {"type": "pipeline", "target_id": "countdown", "inputs": {"steps": 2, "step_seconds": 0.5}},
]

T = TypeVar("T")


@dataclass
class Attempt:
    sent: float
    answered: float
    outcome: str  # the HTTP status, or the exception class of a transport failure
    execution_id: str | None
    detail: str


def keep_creating(url: str, api_key: str, stop: threading.Event, attempts: list[Attempt], offset: int) -> None:
    with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=30) as client:
        index = offset
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = client.post("/api/v1/executions", json=BODIES[index % len(BODIES)])
            except httpx.TransportError as exc:
                attempts.append(Attempt(sent, time.monotonic(), type(exc).__name__, None, str(exc)))
            else:
                created = response.status_code == 201
                attempts.append(Attempt(
                    sent, time.monotonic(), str(response.status_code),
                    response.json()["execution_id"] if created else None,
                    "" if created else response.text[:300],
                ))
            index += 1
            time.sleep(0.2)  # about as many jobs as the four workers finish


def with_fresh_connection(query: Callable[[], T]) -> T:
    """Run an ORM query in the test process, whose pooled connections died with the server."""
    for _ in range(5):
        try:
            return query()
        except DatabaseError:
            reconnect_test_process()
            time.sleep(0.5)
    return query()


def probe(url: str, api_key: str, requests: int = 40) -> Counter:
    """Concurrent reads that need the database, enough to take every pooled connection."""
    def get(_: int) -> str:
        try:
            return str(httpx.get(f"{url}/api/v1/executions", headers={"x-api-key": api_key}, timeout=30).status_code)
        except httpx.TransportError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(20) as pool:
        return Counter(pool.map(get, range(requests)))


def test_postgres_restarted_under_load(make_user, restartable_postgres) -> None:
    _, api_key = api_key_create(user=make_user("loader"))
    busy_server = Server(workers=2)
    idle_server = Server(workers=2)
    cluster = Cluster(workers=4, **CLUSTER_ENV)
    stop = threading.Event()
    attempts: list[Attempt] = []
    clients = [threading.Thread(target=keep_creating, args=(busy_server.url, api_key, stop, attempts, n))
               for n in range(2)]
    try:
        wait_for_log(cluster.log, "ready for work", 4)
        assert probe(idle_server.url, api_key) == Counter({"200": 40})  # its pool holds connections
        for client in clients:
            client.start()
        time.sleep(LOAD_BEFORE)

        restart_began = time.monotonic()
        result = pg_ctlcluster("restart")
        assert result.returncode == 0, result.stderr
        pg_wait_ready()
        back_at = time.monotonic()
        time.sleep(LOAD_AFTER)
        stop.set()
        for client in clients:
            client.join()

        time.sleep(max(0.0, back_at + ERROR_WINDOW + 1 - time.monotonic()))
        idle_answers = probe(idle_server.url, api_key)

        errors = [a for a in attempts if a.outcome != "201"]
        late = [a for a in errors if not restart_began <= a.answered <= back_at + ERROR_WINDOW]
        assert not late, [
            (round(a.sent - restart_began, 2), round(a.answered - back_at, 2), a.outcome, a.detail) for a in late
        ] + [busy_server.errors()]
        acknowledged = [a.execution_id for a in attempts if a.outcome == "201"]
        after_restart = [a for a in attempts if a.outcome == "201" and a.sent > back_at + ERROR_WINDOW]
        assert len(after_restart) > 20, "the API did not take new work after the restart"

        # Every acknowledged job reaches a terminal state, run by the same cluster, untouched.
        deadline = time.monotonic() + 90
        while active := with_fresh_connection(
            lambda: Execution.objects.filter(pk__in=acknowledged, status__in=ExecutionStatus.active()).count()
        ):
            assert time.monotonic() < deadline, f"{active} acknowledged jobs still active\n{cluster.log()[-4000:]}"
            time.sleep(0.5)
        all_done = time.monotonic() - back_at
        assert cluster.process.poll() is None and process_alive(cluster.process.pid)
        rows = with_fresh_connection(lambda: list(Execution.objects.filter(pk__in=acknowledged)))
        assert len(rows) == len(acknowledged)  # none lost
        statuses = Counter(row.status for row in rows)
        assert statuses == Counter({ExecutionStatus.COMPLETED: len(acknowledged)}), [
            (row.pk, row.status, row.error) for row in rows if row.status != ExecutionStatus.COMPLETED
        ]
        rerun = sum(1 for row in rows if row.attempts > 1)

        error_kinds = Counter(a.outcome for a in errors)
        window = (
            f"{min(a.answered for a in errors) - restart_began:.1f}s after the restart began to "
            f"{max(a.answered for a in errors) - back_at:.1f}s after PostgreSQL was back"
            if errors else "none"
        )
        figure(
            f"PostgreSQL restart under load ({len(attempts)} creates by 2 clients, 2 API processes, "
            f"cluster of 4): PostgreSQL down {back_at - restart_began:.1f}s; {len(errors)} failed creates "
            f"{dict(error_kinds)}, from {window} (limit {ERROR_WINDOW:g}s); {len(acknowledged)} acknowledged, "
            f"all completed {all_done:.1f}s after the restart ({rerun} re-run after a lost worker); the "
            f"idle API server answered {dict(idle_answers)} {ERROR_WINDOW + 1:g}s after; no process restarted"
        )
        # Its pool handed out connections that died with the server while it was idle.
        assert idle_answers == Counter({"200": 40}), (idle_answers, idle_server.errors())
    finally:
        stop.set()
        for client in clients:
            if client.is_alive():
                client.join()
        cluster.stop()
        busy_server.stop()
        idle_server.stop()
        # Leave the test process live connections for pytest-django's teardown (flush).
        reconnect_test_process()
        with_fresh_connection(lambda: Execution.objects.exists())
