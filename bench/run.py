"""One-command benchmark of executions against raw django-q2 on the same broker (`make bench`).

In one run, on a bench database of its own, it starts a real ASGI server (uvicorn) and a real
`manage.py qcluster`, then measures:

1. throughput: N no-op `echo` executions through the HTTP API and the worker, first POST to last
   `completed_at`; then N more created in-process with `execution_create` (no HTTP), to split
   the API's cost from the runtime's;
2. baseline: N raw django-q2 no-op tasks on the same broker and cluster (`bench.tasks`), first
   enqueue to last task run; then N that save their result (`save=True`), for context;
3. pickup latency: `created_at` -> `started_at` of executions created one at a time, cluster idle
   (and, for comparison, enqueue -> run of raw tasks);
4. cancel latency: POST /cancel on a running `sleep` -> its `worker_stopped` event;
5. CPU time per job of the server and of the cluster in each throughput phase, which a busy
   machine moves far less than it moves rates.

SQLite + the ORM broker by default (var/bench/db.sqlite3). `--database-url`/`DATABASE_URL` selects
PostgreSQL and `--redis-url`/`REDIS_URL` the Redis broker; the bench then uses a database of its
own (the URL's name + `_bench` unless it already says "bench"), created if missing, and flushes it
at the start of each run. Exit status: 0 when everything was measured (targets met or not), 1 when
something broke, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DIR = ROOT / "var" / "bench"
CLUSTER_NAME = "agentjobs-bench"
RATIO_TARGET = 0.7
PICKUP_P50_TARGET_MS = 20.0


class BenchError(Exception):
    """Something broke: the figures would be meaningless."""


# --- configuration ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    def positive(value: str) -> int:
        number = int(value)
        if number < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return number

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive, default=500, help="executions and raw tasks (500)")
    parser.add_argument("--clients", type=positive, default=4, help="concurrent HTTP clients (4)")
    parser.add_argument("--workers", type=positive, default=2, help="qcluster workers (2)")
    parser.add_argument(
        "--server-workers", type=positive, default=1, help="uvicorn worker processes (1)"
    )
    parser.add_argument("--pickup-samples", type=positive, default=50)
    parser.add_argument("--cancel-samples", type=positive, default=10)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL server to bench on (default: $DATABASE_URL, else SQLite)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", ""),
        help="Redis broker to bench on (default: $REDIS_URL, else the ORM broker)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def bench_database_url(url: str) -> tuple[str, str]:
    """The URL of the bench's own database on the server of ``url``, and its name."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise BenchError(f"--database-url must be a postgres:// URL (SQLite is the default): {url}")
    name = parts.path.lstrip("/") or "agentjobs"
    if "bench" not in name:
        # Never the development database: the bench flushes its database at every run.
        name = f"{name}_bench"
    return urlunsplit(parts._replace(path=f"/{name}")), name


def postgres_database_ensure(url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    maintenance = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@dataclass
class Setup:
    env: dict[str, str]
    database: str
    broker: str


def bench_setup(args: argparse.Namespace) -> Setup:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATA_DIR=str(BENCH_DIR),
        # A queue of its own, so a development cluster on the same Redis never takes bench tasks.
        Q_CLUSTER_NAME=CLUSTER_NAME,
        Q_WORKERS=str(args.workers),
        PYTHONUNBUFFERED="1",
    )
    # The bench measures the platform, not the per-user guards against runaway clients: the
    # create throttle and the active-executions cap would turn a fast run into 429s.
    env.setdefault("API_CREATE_RATE", "100000000/min")
    env.setdefault("EXECUTIONS_MAX_ACTIVE_PER_USER", "0")
    env.setdefault("STREAMS_MAX_PER_USER", "0")  # the stream phase opens 1,000 streams as one user
    env.setdefault("RUNS_MAX_ACTIVE_PER_USER", "0")  # the concurrency phase has 1,000 runs in flight
    from bench.concurrency_bench import BENCH_RUNS_CONCURRENCY

    # Room for the concurrency phase's 1,000 runs in flight on 2 workers (the default is 10 each).
    env.setdefault("RUNS_CONCURRENCY_PER_WORKER", str(BENCH_RUNS_CONCURRENCY))
    from bench.streams_bench import streams_server_env

    streams_server_env(env)  # registers the bench's `burst` graph (bench/langgraph.json)
    if args.database_url:
        url, name = bench_database_url(args.database_url)
        postgres_database_ensure(url, name)
        env["DATABASE_URL"] = url
        database = f"PostgreSQL {urlsplit(url).hostname}:{urlsplit(url).port or 5432}/{name}"
    else:
        env.pop("DATABASE_URL", None)
        database = f"SQLite {(BENCH_DIR / 'db.sqlite3').relative_to(ROOT)}"
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
        broker = f"Redis {args.redis_url}"
    else:
        env.pop("REDIS_URL", None)
        broker = "ORM (database)"
    return Setup(env=env, database=database, broker=broker)


# --- child processes -------------------------------------------------------------------------------


class Children:
    """The server and the cluster, each in a process group of its own so nothing outlives us."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{name}.log", "wb") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def cpu_seconds(self) -> dict[str, float]:
        return {name: group_cpu_seconds(proc.pid) for name, proc in self.procs.items()}

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with status {proc.returncode}\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return f"--- last lines of {path.relative_to(ROOT)} ---\n" + "\n".join(text)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # qcluster's worker processes may linger after their parent: end the whole group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def group_cpu_seconds(pgid: int) -> float:
    """CPU time used so far by a process group (Linux /proc).

    Workers that exited (django-q2 recycles them) are counted through their parent's cutime.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        # After "pid (comm)": state ppid pgrp ... utime stime cutime cstime (12th to 15th).
        if int(fields[2]) == pgid:
            total += sum(int(value) for value in fields[11:15])
    return total / ticks


def manage(setup: Setup, *command: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", *command], cwd=ROOT, env=setup.env,
        capture_output=True, text=True, check=False,
    )
    if result.returncode:
        raise BenchError(f"manage.py {' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- completion signals of raw tasks ---------------------------------------------------------------


class Signals:
    """Receives the datagrams `bench.tasks.noop_signal` sends: task index -> when it ran."""

    def __init__(self, directory: Path) -> None:
        self.address = str(directory / "signals.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.ran_at: dict[int, float] = {}
        self.changed = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._receive, name="signals", daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closing:
            try:
                message = self.sock.recv(128)
            except TimeoutError:
                continue
            index, ran_at = message.decode().split()
            with self.changed:
                self.ran_at[int(index)] = float(ran_at)
                self.changed.notify_all()

    def wait(self, indexes: range, timeout: float, alive: Callable[[], None]) -> list[float]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                missing = sum(1 for i in indexes if i not in self.ran_at)
                if not missing:
                    return [self.ran_at[i] for i in indexes]
                if time.monotonic() > deadline:
                    raise BenchError(f"{missing} of {len(indexes)} raw tasks did not run in {timeout:.0f} s")
                self.changed.wait(0.2)
                alive()

    def close(self) -> None:
        self.closing = True
        self.thread.join(timeout=1)
        self.sock.close()


# --- the benchmark ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class Bench:
    args: argparse.Namespace
    children: Children
    base_url: str
    api_key: str
    user: Any
    signals: Signals
    broker: Any
    task_index: itertools.count = field(default_factory=itertools.count)
    results: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.base_url, headers={"x-api-key": self.api_key}, timeout=30)

    def record_cpu(self, phase: str, before: dict[str, float], n: int) -> None:
        """CPU milliseconds per job of each child: unlike rates, barely moved by a busy machine."""
        after = self.children.cpu_seconds()
        for name in after:
            self.results[f"cpu_ms_{phase}_{name}"] = 1000 * (after[name] - before[name]) / n

    # --- executions ------------------------------------------------------------------------------

    def create(self, client: Any, target: str, inputs: dict) -> str:
        response = client.post(
            "/api/v1/executions", json={"type": "agent", "target_id": target, "inputs": inputs}
        )
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/executions: {response.status_code} {response.text[:300]}")
        return response.json()["execution_id"]

    def wait_terminal(self, ids: list[str], timeout: float) -> list[dict[str, Any]]:
        from executions.models import Execution, ExecutionStatus

        deadline = time.monotonic() + timeout
        while True:
            rows = list(
                Execution.objects.filter(pk__in=ids).values(
                    "status", "created_at", "started_at", "completed_at"
                )
            )
            if sum(row["status"] in ExecutionStatus.terminal() for row in rows) == len(ids):
                return rows
            if time.monotonic() > deadline:
                states = Counter(row["status"] for row in rows)
                raise BenchError(f"executions not finished after {timeout:.0f} s: {dict(states)}")
            self.children.check()
            time.sleep(0.002 if len(ids) == 1 else 0.05)

    def completed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        states = Counter(row["status"] for row in rows)
        if states["completed"] != len(rows):
            raise BenchError(f"echo executions did not all complete: {dict(states)}")
        return rows

    def warm_up(self) -> None:
        """Import everything, open every connection and thread before anything is timed."""
        with self.client() as client:
            ids = [self.create(client, "echo", {}) for _ in range(4 * self.args.workers)]
        self.completed(self.wait_terminal(ids, timeout=60))
        self.raw_tasks(4 * self.args.workers, timeout=60)
        before = self.children.cpu_seconds()
        time.sleep(1)
        self.record_cpu("idle", before, 1)

    def executions_throughput(self) -> None:
        from executions.models import Execution, ExecutionStatus

        n = self.args.n
        numbers = itertools.count()
        ids: list[str] = []
        errors: list[Exception] = []
        last_response = [0.0]

        def post_loop() -> None:
            try:
                with self.client() as client:
                    while next(numbers) < n and not errors:
                        ids.append(self.create(client, "echo", {}))
                        last_response[0] = max(last_response[0], time.time())
            except Exception as exc:  # noqa: BLE001  the main thread reports it and fails the run
                errors.append(exc)

        terminal_before = Execution.objects.filter(
            owner=self.user, status__in=ExecutionStatus.terminal()
        ).count()
        cpu_before = self.children.cpu_seconds()
        threads = [threading.Thread(target=post_loop) for _ in range(self.args.clients)]
        started = time.time()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + max(60, n / 5)
        while True:
            if errors:
                raise BenchError(f"posting executions failed: {errors[0]!r}")
            done = Execution.objects.filter(
                owner=self.user, status__in=ExecutionStatus.terminal()
            ).count() - terminal_before
            if done >= n:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"only {done} of {n} executions finished in time")
            self.children.check()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        self.record_cpu("api", cpu_before, n)
        rows = self.completed(self.wait_terminal(ids, timeout=10))
        finished = max(row["completed_at"] for row in rows).timestamp()
        self.results["executions_per_s"] = n / (finished - started)
        self.results["posts_per_s"] = n / (last_response[0] - started)

    def executions_in_process(self) -> None:
        """The same executions created by a service call, no HTTP: what the runtime itself costs."""
        from executions.services import execution_create

        n = self.args.n
        cpu_before = self.children.cpu_seconds()
        started = time.time()
        ids = [
            str(execution_create(owner=self.user, type="agent", target_id="echo", inputs={}).pk)
            for _ in range(n)
        ]
        self.results["creates_in_process_per_s"] = n / (time.time() - started)
        rows = self.completed(self.wait_terminal(ids, timeout=max(60, n / 5)))
        self.record_cpu("in_process", cpu_before, n)
        finished = max(row["completed_at"] for row in rows).timestamp()
        self.results["executions_in_process_per_s"] = n / (finished - started)

    # --- raw django-q2 ---------------------------------------------------------------------------

    def raw_enqueue(self) -> int:
        from django_q.tasks import async_task

        index = next(self.task_index)
        async_task("bench.tasks.noop_signal", self.signals.address, index, broker=self.broker)
        return index

    def raw_tasks(self, n: int, timeout: float) -> tuple[float, float, list[float]]:
        started = time.time()
        first = self.raw_enqueue()
        for _ in range(n - 1):
            self.raw_enqueue()
        enqueued = time.time()
        ran_at = self.signals.wait(range(first, first + n), timeout, self.children.check)
        return started, enqueued, ran_at

    def raw_throughput(self) -> None:
        n = self.args.n
        cpu_before = self.children.cpu_seconds()
        started, enqueued, ran_at = self.raw_tasks(n, timeout=max(60, n / 5))
        # The monitor acknowledges (ORM broker: deletes) shortly after the last task ran.
        time.sleep(0.5)
        self.record_cpu("raw", cpu_before, n)
        self.results["raw_per_s"] = n / (max(ran_at) - started)
        self.results["raw_enqueues_per_s"] = n / (enqueued - started)

    def raw_saved_throughput(self) -> None:
        """Raw no-op tasks that store their result, as django-q2 does unless save_limit < 0.

        Not the target's baseline (our cluster runs with save_limit=-1), but the closest raw
        django-q2 job that leaves a database record of its outcome, as every execution does.
        """
        from django_q.models import Task
        from django_q.tasks import async_task

        n = self.args.n
        group = f"bench-saved-{time.time_ns()}"
        cpu_before = self.children.cpu_seconds()
        started = time.time()
        for _ in range(n):
            async_task("executions.tasks.noop", group=group, save=True, broker=self.broker)
        deadline = time.monotonic() + max(60, n / 5)
        while (saved := Task.objects.filter(group=group).count()) < n:
            if time.monotonic() > deadline:
                raise BenchError(f"only {saved} of {n} saved raw tasks were recorded in time")
            self.children.check()
            time.sleep(0.02)
        finished = time.time()
        self.record_cpu("raw_saved", cpu_before, n)
        self.results["raw_saved_per_s"] = n / (finished - started)

    # --- latencies -------------------------------------------------------------------------------

    def pickup(self) -> None:
        latencies = []
        with self.client() as client:
            for _ in range(self.args.pickup_samples):
                time.sleep(random.uniform(0.02, 0.08))  # off the broker's poll rhythm
                row = self.completed(self.wait_terminal([self.create(client, "echo", {})], 10))[0]
                latencies.append((row["started_at"] - row["created_at"]).total_seconds())
        raw = []
        for _ in range(self.args.pickup_samples):
            time.sleep(random.uniform(0.02, 0.08))
            enqueued = time.time()
            index = self.raw_enqueue()
            raw.append(self.signals.wait(range(index, index + 1), 10, self.children.check)[0] - enqueued)
        self.results["pickup_ms"] = [1000 * v for v in latencies]
        self.results["raw_pickup_ms"] = [1000 * v for v in raw]

    def cancel(self) -> None:
        from executions.models import Execution, ExecutionEvent, ExecutionEventType

        latencies = []
        with self.client() as client:
            for _ in range(self.args.cancel_samples):
                execution_id = self.create(client, "sleep", {"seconds": 30})
                deadline = time.monotonic() + 10
                while Execution.objects.filter(pk=execution_id, status="running").count() == 0:
                    if time.monotonic() > deadline:
                        raise BenchError(f"sleep execution {execution_id} never started running")
                    self.children.check()
                    time.sleep(0.005)
                time.sleep(random.uniform(0.05, 0.3))  # land anywhere in the worker's check cycle
                requested = time.time()
                response = client.post(f"/api/v1/executions/{execution_id}/cancel")
                if response.status_code != 200 or response.json()["status"] != "cancelled":
                    raise BenchError(f"cancel: {response.status_code} {response.text[:300]}")
                deadline = time.monotonic() + 10
                while True:
                    stopped = ExecutionEvent.objects.filter(
                        execution_id=execution_id, type=ExecutionEventType.WORKER_STOPPED
                    ).values_list("at", flat=True).first()
                    if stopped is not None:
                        break
                    if time.monotonic() > deadline:
                        raise BenchError(f"the worker running {execution_id} did not stop within 10 s")
                    self.children.check()
                    time.sleep(0.005)
                latencies.append(stopped.timestamp() - requested)
        self.results["cancel_ms"] = [1000 * v for v in latencies]


# --- report ----------------------------------------------------------------------------------------


def busy_warning(load: float) -> str:
    cpus = os.cpu_count() or 1
    if load <= cpus / 2:
        return ""
    return (f"warning: the machine was busy (load average {load:.1f} on {cpus} CPUs before the "
            "run): rates are low and noisy; compare ratios within one run, not across runs")


def report(setup: Setup, args: argparse.Namespace, results: dict[str, Any], elapsed: float) -> str:
    ratio = results["executions_per_s"] / results["raw_per_s"]
    ratio_in_process = results["executions_in_process_per_s"] / results["raw_per_s"]
    pickup, raw_pickup, cancel = results["pickup_ms"], results["raw_pickup_ms"], results["cancel_ms"]
    pickup_p50 = percentile(pickup, 0.5)
    on_redis = bool(args.redis_url)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows = [
        ("executions, end to end (first POST -> last completed)",
         f"{results['executions_per_s']:.1f} /s", "", ""),
        ("  POST /api/v1/executions alone (first sent -> last answered)",
         f"{results['posts_per_s']:.1f} /s", "", ""),
        ("executions created in-process (execution_create, no HTTP)",
         f"{results['executions_in_process_per_s']:.1f} /s", "", ""),
        ("  execution_create calls alone", f"{results['creates_in_process_per_s']:.1f} /s", "", ""),
        ("raw django-q2 no-op tasks (first enqueue -> last run)",
         f"{results['raw_per_s']:.1f} /s", "", ""),
        ("  async_task calls alone", f"{results['raw_enqueues_per_s']:.1f} /s", "", ""),
        ("raw django-q2 no-op tasks saving their result (save=True)",
         f"{results['raw_saved_per_s']:.1f} /s", "", ""),
        ("ratio executions through the API / raw", f"{ratio:.2f}", f">= {RATIO_TARGET}",
         verdict(ratio >= RATIO_TARGET)),
        ("ratio executions in-process / raw", f"{ratio_in_process:.2f}", "(diagnostic)", ""),
        ("ratio executions through the API / raw saving results",
         f"{results['executions_per_s'] / results['raw_saved_per_s']:.2f}", "(diagnostic)", ""),
        (f"pickup p50 / p95 (created_at -> started_at, {len(pickup)} idle)",
         f"{pickup_p50:.1f} / {percentile(pickup, 0.95):.1f} ms",
         f"p50 <= {PICKUP_P50_TARGET_MS:.0f} ms" + ("" if on_redis else " on Redis"),
         verdict(pickup_p50 <= PICKUP_P50_TARGET_MS) if on_redis else "n/a (ORM broker)"),
        ("  raw django-q2 pickup p50 / p95 (enqueue -> run)",
         f"{percentile(raw_pickup, 0.5):.1f} / {percentile(raw_pickup, 0.95):.1f} ms", "", ""),
        (f"cancel p50 / max (POST cancel -> worker_stopped, {len(cancel)} runs)",
         f"{percentile(cancel, 0.5):.0f} / {max(cancel):.0f} ms", "", ""),
        ("CPU per POST, API server", f"{results['cpu_ms_api_server']:.2f} ms", "", ""),
        ("CPU per execution, cluster (API phase / in-process phase)",
         f"{results['cpu_ms_api_qcluster']:.2f} / {results['cpu_ms_in_process_qcluster']:.2f} ms",
         "", ""),
        ("CPU per raw task, cluster (no-op / saving its result)",
         f"{results['cpu_ms_raw_qcluster']:.2f} / {results['cpu_ms_raw_saved_qcluster']:.2f} ms",
         "", ""),
        ("  cluster CPU while idle", f"{results['cpu_ms_idle_qcluster']:.0f} ms/s", "", ""),
    ]
    from bench.concurrency_bench import concurrency_report_rows
    from bench.runs_bench import runs_report_rows
    from bench.streams_bench import streams_report_rows

    rows += runs_report_rows(results) + concurrency_report_rows(results) + streams_report_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        (
            f"bench: {setup.database}, broker {setup.broker}, {args.workers} workers, "
            f"N={args.n}, {args.clients} HTTP clients, {args.server_workers} uvicorn process(es), "
            f"{os.cpu_count()} CPUs ({elapsed:.0f} s)"
        ),
        "",
    ]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if warning := busy_warning(results["load_before"]):
        lines += ["", warning]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    setup = bench_setup(args)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    print(f"bench: preparing {setup.database} with broker {setup.broker} ...", flush=True)
    manage(setup, "migrate", "--no-input", "-v0")
    manage(setup, "flush", "--no-input", "-v0")

    # This process enqueues raw tasks and reads results on the same database and broker.
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ.update(setup.env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django_q.brokers import get_broker

    from accounts.models import api_key_create
    from bench.concurrency_bench import concurrency_measure
    from bench.runs_bench import runs_measure
    from bench.streams_bench import streams_measure

    if connections["default"].vendor == "sqlite":
        # Settings close SQLite connections after each use outside workers; a connect per raw
        # enqueue would slow the baseline by the bench's own overhead, not django-q2's.
        connections["default"].settings_dict["CONN_MAX_AGE"] = None
    user = get_user_model().objects.create(username="benchuser")
    _, api_key = api_key_create(user=user, name="bench")
    broker = get_broker()
    broker.purge_queue()

    port = free_port()
    children = Children(setup.env, BENCH_DIR)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    signals = Signals(workdir)
    try:
        children.start("server", [
            sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--log-level", "warning",
            "--workers", str(args.server_workers),
        ])
        children.start("qcluster", [sys.executable, "manage.py", "qcluster"])
        bench = Bench(args=args, children=children, base_url=f"http://127.0.0.1:{port}",
                      api_key=api_key, user=user, signals=signals, broker=broker)
        bench.results["load_before"] = load_before
        wait_server(bench)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("warming up", bench.warm_up),
            (f"{args.n} echo executions through the API", bench.executions_throughput),
            (f"{args.n} echo executions created in-process", bench.executions_in_process),
            (f"{args.n} raw django-q2 no-op tasks", bench.raw_throughput),
            (f"{args.n} raw django-q2 no-op tasks saving their result", bench.raw_saved_throughput),
            ("pickup latency", bench.pickup),
            ("cancel latency", bench.cancel),
            ("runs.wait through langgraph-sdk", lambda: bench.results.update(runs_measure(
                base_url=bench.base_url, api_key=api_key, check=children.check, cpu=children.cpu_seconds))),
            ("graph runs that wait, many at once", lambda: bench.results.update(concurrency_measure(
                base_url=bench.base_url, api_key=api_key, check=children.check,
                cluster_pgid=children.procs["qcluster"].pid))),
            ("event streams", lambda: bench.results.update(streams_measure(
                base_url=bench.base_url, api_key=api_key, server_pgid=children.procs["server"].pid,
                check=children.check))),
        ]
        for label, step in steps:
            print(f"bench: {label} ...", flush=True)
            step()
    except BenchError:
        for name in children.procs:
            print(children.tail(name), file=sys.stderr)
        raise
    finally:
        children.stop()
        signals.close()
        Path(signals.address).unlink(missing_ok=True)
        workdir.rmdir()
    print()
    print(report(setup, args, bench.results, time.monotonic() - began))
    if args.json:
        args.json.write_text(json.dumps(
            {"database": setup.database, "broker": setup.broker, "n": args.n,
             "workers": args.workers, **bench.results}, indent=2))
    return 0


def wait_server(bench: Bench) -> None:
    import httpx

    deadline = time.monotonic() + 30
    with bench.client() as client:
        while True:
            bench.children.check()
            try:
                if client.get("/api/v1/targets").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the server did not answer within 30 s")
            time.sleep(0.1)


def wait_ok(base_url: str, check: Callable[[], None]) -> None:
    """Until the server at ``base_url`` answers ``/ok``; ``check`` raises once a child died."""
    import httpx

    deadline = time.monotonic() + 30
    while True:
        check()
        try:
            if httpx.get(f"{base_url}/ok", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise BenchError("the server did not answer /ok within 30 s")
        time.sleep(0.1)


def print_phase_report(
    rows: list[tuple[str, str, str, str]], *, setup: Setup, load_before: float,
    results: dict[str, Any], json_path: Path | None,
) -> None:
    """The table of a phase run on its own (runs_bench.py, streams_bench.py), and its JSON file."""
    rows = [("figure", "value", "target", "")] + rows
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"load average before: {load_before:.2f} on {os.cpu_count()} CPUs; after: {os.getloadavg()[0]:.2f}")
    if json_path:
        json_path.write_text(json.dumps(
            {"database": setup.database, "broker": setup.broker, "load_before": load_before, **results},
            indent=2, default=str,
        ))


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s finally: children stopped

    signal.signal(signal.SIGTERM, terminate)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
