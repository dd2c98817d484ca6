"""`make bench`'s streaming phase: Server-Sent Events as an httpx client receives them.

Measured against the already started uvicorn + qcluster of `bench/run.py`:

1. time to first event: ``POST /threads/{t}/runs/stream`` of the ``echo`` graph sent -> the bytes
   of its first event (``metadata``, written by the worker once it claimed the run, so this
   includes the broker's pickup); and ``GET /api/v1/executions/{id}/events`` sent -> its first
   (already stored) event, the cost of opening a stream alone;
2. events/s through one stream: a run of the bench's ``burst`` graph (``bench/graphs.py``, N
   ``custom`` events) streamed live, then replayed from the stored events with a join and
   ``Last-Event-ID: -1``; a ``countdown`` pipeline of 1,000 zero-second steps (one ``progress``
   event each) streamed live, then replayed;
3. idle streams one server process holds: N ``GET /api/v1/executions/{id}/events`` on one
   ``countdown`` execution sleeping in its single step (so nothing but ``: heartbeat`` flows),
   all open at once for ``hold`` seconds; the server's RSS (VmRSS of the uvicorn process group),
   open files, threads and database connections before, during and after; errors; heartbeats
   received. After every client hung up, the server must be back to its baseline: a task, a
   socket or a connection left behind by a disconnect shows up there.

Target (issue 4): 1,000 idle streams with heartbeats under 1 GB RSS and no errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

BENCH_GRAPHS_CONFIG = Path(__file__).resolve().parent / "langgraph.json"
IDLE_STREAMS_TARGET = 1000
RSS_TARGET_MB = 1024.0
# The server sends a heartbeat after 5 s of silence: 12 s held gives every stream two, with slack
# for a server slow to send a stream's first events.
HOLD_SECONDS = 12.0
# Streams not open by then count as not held (the hold starts anyway).
OPEN_TIMEOUT_SECONDS = 20.0


class StreamsBenchError(Exception):
    """A stream misbehaved in a way that makes the figures meaningless."""


def streams_server_env(env: dict[str, str]) -> None:
    """What the bench's server and cluster need for this phase: the ``burst`` graph registered the
    way a user's project registers graphs, and no per-user cap on open streams (100 by default;
    set STREAMS_MAX_PER_USER yourself to bench with it)."""
    env["LANGGRAPH_CONFIG"] = str(BENCH_GRAPHS_CONFIG)
    env.setdefault("STREAMS_MAX_PER_USER", "0")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


# --- SSE as bytes on the wire -----------------------------------------------------------------------


@dataclass
class SseReader:
    """Splits a byte stream into SSE frames: ("event", name) or ("comment", text)."""

    buffer: bytes = b""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        # CRLF framing (ours and the real server's); a CR at a chunk's end is completed by the next.
        self.buffer = (self.buffer + chunk).replace(b"\r\n", b"\n")
        *frames, self.buffer = self.buffer.split(b"\n\n")
        parsed = []
        for frame in frames:
            if frame.startswith(b":"):
                parsed.append(("comment", frame[1:].strip().decode()))
                continue
            name = "message"
            for line in frame.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
            parsed.append(("event", name))
        return parsed


# --- the server process, from /proc ---------------------------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    """The uvicorn process group: one process with --workers 1, a supervisor and workers else."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _status_field(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fd_targets(pid: int) -> list[str]:
    targets = []
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(fd.path))
            except OSError:
                continue
    except OSError:
        pass
    return targets


def _remote_ports(pid: int) -> dict[int, int]:
    """socket inode -> remote port of the process's established TCP connections."""
    ports = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01":  # ESTABLISHED
                ports[int(fields[9])] = int(fields[2].rpartition(":")[2], 16)
    return ports


def _service_ports() -> tuple[int | None, int | None]:
    """The PostgreSQL and Redis ports the bench's server talks to (None when not used)."""
    database = os.environ.get("DATABASE_URL", "")
    redis = os.environ.get("REDIS_URL", "")
    db_port = (urlsplit(database).port or 5432) if database.startswith("postgres") else None
    redis_port = (urlsplit(redis).port or 6379) if redis else None
    return db_port, redis_port


@dataclass
class ServerSample:
    rss_mb: float
    fds: int
    threads: int
    db_connections: int
    redis_connections: int
    cpu_s: float


def server_sample(pgid: int) -> ServerSample:
    """Resources the server's processes hold now. Database connections: TCP connections to
    PostgreSQL's port, or open SQLite database files (the db, -wal and -shm, per connection)."""
    db_port, redis_port = _service_ports()
    rss = fds = threads = db = redis = 0
    ticks = 0
    for pid in _group_pids(pgid):
        rss += _status_field(pid, "VmRSS")
        threads += _status_field(pid, "Threads")
        targets = _fd_targets(pid)
        fds += len(targets)
        inodes = {int(t[8:-1]) for t in targets if t.startswith("socket:[")}
        ports = {inode: port for inode, port in _remote_ports(pid).items() if inode in inodes}
        if db_port is None:
            db += sum(1 for t in targets if ".sqlite3" in t)
        else:
            db += sum(1 for port in ports.values() if port == db_port)
        if redis_port is not None:
            redis += sum(1 for port in ports.values() if port == redis_port)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ServerSample(rss / 1024, fds, threads, db, redis, ticks / os.sysconf("SC_CLK_TCK"))


def _raise_open_files(pgid: int, wanted: int) -> int:
    """Enough descriptors for ``wanted`` in this process and in the server's (``ulimit -n`` is
    often 1024), never beyond the hard limit; returns the server's soft limit now."""
    def raised(soft: int, hard: int) -> int | None:
        if soft == resource.RLIM_INFINITY or soft >= wanted:
            return None
        return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)

    limit = raised(*resource.getrlimit(resource.RLIMIT_NOFILE))
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    server_limits = []
    for pid in _group_pids(pgid):
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        limit = raised(soft, hard)
        if limit is not None:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        server_limits.append(resource.prlimit(pid, resource.RLIMIT_NOFILE)[0])
    return min(server_limits, default=0)


# --- the measurements -----------------------------------------------------------------------------


@dataclass
class StreamsBench:
    base_url: str
    api_key: str
    server_pgid: int
    check: Callable[[], None]
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60)

    def _json(self, response: httpx.Response, expected: int = 200) -> Any:
        if response.status_code != expected:
            raise StreamsBenchError(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:300]}"
            )
        return response.json()

    def execution_create(self, client: httpx.Client, target: str, inputs: dict, type_: str) -> str:
        body = {"type": type_, "target_id": target, "inputs": inputs}
        return self._json(client.post("/api/v1/executions", json=body), 201)["execution_id"]

    def execution_wait_status(self, client: httpx.Client, execution_id: str, statuses: set[str]) -> None:
        deadline = time.monotonic() + 30
        while (status := self._json(client.get(f"/api/v1/executions/{execution_id}"))["status"]) not in statuses:
            if time.monotonic() > deadline:
                raise StreamsBenchError(f"execution {execution_id} still {status} after 30 s")
            self.check()
            time.sleep(0.05)

    # --- time to first event ---------------------------------------------------------------------

    def first_event(self, samples: int = 20, max_seconds: float = 12.0) -> None:
        """``samples`` of each (fewer if ``max_seconds`` run out first)."""
        runs, executions = [], []
        with self.client() as client:
            thread_id = self._json(client.post("/threads", json={}))["thread_id"]
            body = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}
            deadline = time.perf_counter() + max_seconds
            for i in range(samples + 2):  # the first two warm up the stream path
                if time.perf_counter() > deadline and runs:
                    break
                sent = time.perf_counter()
                first: float | None = None
                names = []
                reader = SseReader()
                with client.stream("POST", f"/threads/{thread_id}/runs/stream", json=body) as response:
                    if response.status_code != 200:
                        raise StreamsBenchError(f"runs/stream: {response.status_code} {response.read()[:300]!r}")
                    for chunk in response.iter_raw():
                        for kind, name in reader.feed(chunk):
                            if kind == "event":
                                first = first or time.perf_counter()
                                names.append(name)
                if names[:1] != ["metadata"] or "values" not in names:
                    raise StreamsBenchError(f"runs/stream of echo sent {names}")
                if i >= 2:
                    runs.append(first - sent)
            self.check()
            deadline = time.perf_counter() + max_seconds
            for i in range(samples + 2):
                if time.perf_counter() > deadline and executions:
                    break
                execution_id = self.execution_create(client, "echo", {}, "agent")
                sent = time.perf_counter()
                reader = SseReader()
                with client.stream("GET", f"/api/v1/executions/{execution_id}/events") as response:
                    if response.status_code != 200:
                        raise StreamsBenchError(f"executions events: {response.status_code}")
                    for chunk in response.iter_raw():
                        if any(kind == "event" for kind, _ in reader.feed(chunk)):
                            if i >= 2:
                                executions.append(time.perf_counter() - sent)
                            break
        self.results["streams_first_event_runs_ms"] = [1000 * v for v in runs]
        self.results["streams_first_event_executions_ms"] = [1000 * v for v in executions]

    # --- events per second through one stream -----------------------------------------------------

    @staticmethod
    def _count(response: httpx.Response, wanted: str) -> tuple[int, float, float, Counter]:
        """(wanted events, first's time, last's time, every name) of a whole SSE response."""
        if response.status_code != 200:
            raise StreamsBenchError(f"{response.request.url.path}: {response.status_code} {response.read()[:300]!r}")
        reader, names = SseReader(), Counter()
        n, first, last = 0, 0.0, 0.0
        for chunk in response.iter_raw():
            now = time.perf_counter()
            for kind, name in reader.feed(chunk):
                if kind == "event":
                    names[name] += 1
                    if name == wanted:
                        n += 1
                        first = first or now
                        last = now
        return n, first, last, names

    def events_rate(self, burst: int = 5000, steps: int = 1000) -> None:
        with self.client() as client:
            thread_id = self._json(client.post("/threads", json={}))["thread_id"]
            body = {"assistant_id": "burst", "input": {"count": burst}, "stream_mode": ["custom"],
                    "stream_resumable": True}
            sent = time.perf_counter()
            with client.stream("POST", f"/threads/{thread_id}/runs/stream", json=body) as response:
                run_path = response.headers.get("content-location", "")
                n, first, last, names = self._count(response, "custom")
            ended = time.perf_counter()
            if n != burst:
                raise StreamsBenchError(f"the burst run streamed {n} of {burst} custom events: {dict(names)}")
            self.results["streams_runs_live_per_s"] = n / (last - first)
            self.results["streams_runs_live_total_s"] = ended - sent
            self.results["streams_runs_burst"] = burst

            sent = time.perf_counter()
            with client.stream("GET", f"{run_path}/stream", headers={"Last-Event-ID": "-1"}) as response:
                n, first, last, names = self._count(response, "custom")
            if n != burst:
                raise StreamsBenchError(f"replaying the burst run gave {n} of {burst} custom events: {dict(names)}")
            self.results["streams_runs_replay_per_s"] = n / (last - sent)
            self.check()

            execution_id = self.execution_create(
                client, "countdown", {"steps": steps, "step_seconds": 0}, "pipeline"
            )
            with client.stream("GET", f"/api/v1/executions/{execution_id}/events") as response:
                n, first, last, names = self._count(response, "progress")
            if n < steps:
                raise StreamsBenchError(f"the countdown streamed {n} progress events for {steps} steps: {dict(names)}")
            self.results["streams_executions_live_per_s"] = n / (last - first)
            self.results["streams_executions_steps"] = steps
            sent = time.perf_counter()
            with client.stream(
                "GET", f"/api/v1/executions/{execution_id}/events", headers={"Last-Event-ID": "0"}
            ) as response:
                n, first, last, names = self._count(response, "progress")
            self.results["streams_executions_replay_per_s"] = n / (last - sent)
            self.check()

    # --- idle streams --------------------------------------------------------------------------------

    async def _hold(self, path: str, n: int, hold: float) -> dict[str, Any]:
        """Open ``n`` streams of ``path`` at once, keep them ``hold`` seconds, then hang up."""
        pending, opened, ended, failed = range(4)
        state = [pending] * n
        open_count = 0
        all_open = asyncio.Event()
        heartbeats = [0] * n
        errors: list[str] = []
        open_times: list[float] = []
        # httpx's pool does work proportional to its connections on every request event: shards
        # of 100 keep the client from being what limits how fast the streams open.
        shards = max(1, math.ceil(n / 100))
        limits = httpx.Limits(max_connections=math.ceil(n / shards) + 10, max_keepalive_connections=0)
        timeout = httpx.Timeout(connect=60, read=30, write=30, pool=60)

        async def follow(client: httpx.AsyncClient, index: int) -> None:
            nonlocal open_count
            reader = SseReader()
            sent = time.perf_counter()
            try:
                async with client.stream("GET", path) as response:
                    if response.status_code != 200:
                        state[index] = failed
                        errors.append(f"HTTP {response.status_code}: {(await response.aread())[:120]!r}")
                        return
                    open_times.append(time.perf_counter() - sent)
                    state[index] = opened
                    open_count += 1
                    if open_count == n:
                        all_open.set()
                    async for chunk in response.aiter_raw():
                        for kind, text in reader.feed(chunk):
                            if kind == "comment" and text == "heartbeat":
                                heartbeats[index] += 1
                state[index] = ended  # the server closed an idle stream: counted as not held
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  counted and reported: the figure is "no errors"
                state[index] = failed
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(
                    base_url=self.base_url, headers=self.headers, limits=limits, timeout=timeout
                ))
                for _ in range(shards)
            ]
            started = time.perf_counter()
            server_before = server_sample(self.server_pgid).cpu_s
            client_before = time.process_time()
            tasks = [asyncio.create_task(follow(clients[i % shards], i)) for i in range(n)]
            try:
                await asyncio.wait_for(all_open.wait(), timeout=OPEN_TIMEOUT_SECONDS)
            except TimeoutError:
                pass
            open_s = time.perf_counter() - started
            held_from = time.perf_counter()
            peak = first = server_sample(self.server_pgid)
            # Which side limits how fast streams open: CPU ms per second of each while opening.
            cpu_open = {"server": 1000 * (first.cpu_s - server_before) / open_s,
                        "client": 1000 * (time.process_time() - client_before) / open_s}
            while time.perf_counter() - held_from < hold:
                await asyncio.sleep(0.5)
                sample = server_sample(self.server_pgid)
                if sample.rss_mb > peak.rss_mb:
                    peak = sample
            during = server_sample(self.server_pgid)
            cpu_during = 1000 * (during.cpu_s - first.cpu_s) / (time.perf_counter() - held_from)
            still_open = state.count(opened)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        held = [heartbeats[i] for i in range(n) if state[i] == opened]
        return {
            "opened": len(open_times), "open_s": open_s,
            "open_p95_ms": 1000 * _percentile(open_times, 0.95) if open_times else 0.0,
            "still_open": still_open, "ended_early": state.count(ended),
            "never_opened": state.count(pending), "errors": len(errors),
            "first_error": errors[0] if errors else "",
            "heartbeats": sum(heartbeats), "min_heartbeats": min(held) if held else 0,
            "peak": peak, "during": during, "cpu_during_ms_per_s": cpu_during,
            "open_cpu_ms_per_s": cpu_open,
        }

    def _settle(self, baseline: ServerSample, seconds: float = 6.0) -> tuple[ServerSample, float]:
        """Wait until the server holds no more threads and client sockets than before the streams
        (closing is asynchronous); the sample then, and how long it took. PostgreSQL connections
        are not waited for: the pool keeps up to its max_size open by design."""
        started = time.monotonic()
        sqlite = _service_ports()[0] is None
        while True:
            sample = server_sample(self.server_pgid)
            other_fds = sample.fds - (0 if sqlite else sample.db_connections)
            baseline_other = baseline.fds - (0 if sqlite else baseline.db_connections)
            # Threads: asyncio's default executor keeps up to min(32, CPUs + 4) once started.
            settled = (
                other_fds <= baseline_other + 2
                and sample.threads <= baseline.threads + min(32, (os.cpu_count() or 1) + 4)
            )
            if settled or time.monotonic() - started > seconds:
                return sample, time.monotonic() - started
            time.sleep(0.25)

    def _idle_cpu(self, seconds: float = 1.0) -> float:
        """Server CPU ms per second while nothing is asked of it: a leaked loop keeps spending."""
        before = server_sample(self.server_pgid).cpu_s
        time.sleep(seconds)
        return 1000 * (server_sample(self.server_pgid).cpu_s - before) / seconds

    def _hold_and_measure(self, path: str, n: int, hold: float) -> dict[str, Any]:
        baseline = server_sample(self.server_pgid)
        baseline_cpu = self._idle_cpu()
        held = asyncio.run(self._hold(path, n, hold))
        cpu_during = held.pop("cpu_during_ms_per_s")
        after, settle_s = self._settle(baseline)
        after_cpu = self._idle_cpu()
        peak, during = held.pop("peak"), held.pop("during")

        def trio(attribute: str) -> dict[str, float]:
            return {"before": getattr(baseline, attribute), "during": getattr(during, attribute),
                    "after": getattr(after, attribute)}

        return {
            "n": n, "hold_s": hold, **held,
            "rss_mb": {"before": baseline.rss_mb, "peak": peak.rss_mb, "after": after.rss_mb},
            "fds": trio("fds"), "threads": trio("threads"), "db_connections": trio("db_connections"),
            "redis_connections": trio("redis_connections"),
            "cpu_ms_per_s": {"before": baseline_cpu, "during": cpu_during, "after": after_cpu},
            "settle_s": settle_s,
        }

    def idle_streams(self, n: int = IDLE_STREAMS_TARGET, hold: float = HOLD_SECONDS) -> None:
        """``n`` idle streams of each kind, one kind after the other: execution events on a
        running execution, and a thread stream on an idle thread (the runs API)."""
        # A stream holds a socket, and on SQLite an execution stream two database files too.
        self.results["streams_server_open_files_limit"] = _raise_open_files(self.server_pgid, 4 * n + 1024)
        idle: dict[str, Any] = {}
        with self.client() as client:
            # One step that sleeps: a running execution whose stream carries nothing but heartbeats.
            execution_id = self.execution_create(
                client, "countdown", {"steps": 1, "step_seconds": 600}, "pipeline"
            )
            try:
                self.execution_wait_status(client, execution_id, {"running"})
                idle["executions"] = self._hold_and_measure(
                    f"/api/v1/executions/{execution_id}/events", n, hold
                )
            finally:
                client.post(f"/api/v1/executions/{execution_id}/cancel")
            self.check()
            thread_id = self._json(client.post("/threads", json={}))["thread_id"]
            idle["runs"] = self._hold_and_measure(f"/threads/{thread_id}/stream", n, hold)
        self.check()
        self.results["streams_idle"] = idle


def streams_measure(
    *, base_url: str, api_key: str, server_pgid: int, check: Callable[[], None],
    idle_streams: int = IDLE_STREAMS_TARGET,
) -> dict[str, Any]:
    """The streaming figures, as ``streams_*`` keys for the bench's results."""
    bench = StreamsBench(base_url=base_url, api_key=api_key, server_pgid=server_pgid, check=check)
    for label, step in (
        ("time to first event", bench.first_event),
        ("events/s through one stream", bench.events_rate),
        (f"{idle_streams} idle streams of executions, then of a thread",
         lambda: bench.idle_streams(n=idle_streams)),
    ):
        print(f"bench:   {label} ...", flush=True)
        step()
    return bench.results


IDLE_KINDS = {
    "executions": "GET /api/v1/executions/{id}/events, one running execution",
    "runs": "GET /threads/{id}/stream, one idle thread",
}


def _idle_ok(idle: dict[str, Any]) -> bool:
    return (
        idle["n"] >= IDLE_STREAMS_TARGET
        and idle["opened"] == idle["n"]
        and idle["still_open"] == idle["n"]
        and idle["errors"] == 0
        and idle["min_heartbeats"] >= 1
        and idle["rss_mb"]["peak"] <= RSS_TARGET_MB
    )


def streams_report_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of the bench's table: (figure, value, target, verdict)."""
    if "streams_idle" not in results:
        return []

    def spread(values: list[float]) -> str:
        return f"{_percentile(values, 0.5):.0f} / {_percentile(values, 0.95):.0f} ms"

    def arrow(values: dict[str, float], fmt: str = "{:.0f}") -> str:
        return " -> ".join(fmt.format(v) for v in values.values())

    rows = [
        ((f"first event p50 / p95, POST /threads/{{t}}/runs/stream echo -> metadata bytes "
         f"({len(results['streams_first_event_runs_ms'])})"),
         spread(results["streams_first_event_runs_ms"]), "", ""),
        ((f"first event p50 / p95, GET /executions/{{id}}/events -> first stored event "
         f"({len(results['streams_first_event_executions_ms'])})"),
         spread(results["streams_first_event_executions_ms"]), "", ""),
        (f"events through one run stream, live ({results['streams_runs_burst']} custom events)",
         f"{results['streams_runs_live_per_s']:.0f} /s", "", ""),
        ("  the same replayed (join, Last-Event-ID: -1)",
         f"{results['streams_runs_replay_per_s']:.0f} /s", "", ""),
        ((f"events through one execution stream, live (countdown, "
          f"{results['streams_executions_steps']} steps of 0 s)"),
         f"{results['streams_executions_live_per_s']:.0f} /s", "", ""),
        ("  the same replayed (Last-Event-ID: 0)",
         f"{results['streams_executions_replay_per_s']:.0f} /s", "", ""),
    ]
    limit = results.get("streams_server_open_files_limit", 0)
    if limit != resource.RLIM_INFINITY and limit < 4 * IDLE_STREAMS_TARGET:
        rows.append(("server's open-file limit (raise the hard limit: ulimit -Hn)", str(limit),
                     f">= {4 * IDLE_STREAMS_TARGET}", "TOO LOW"))
    for kind, idle in results["streams_idle"].items():
        errors = f"{idle['errors']} errors"
        if idle["first_error"]:
            # "HTTP 500" or the exception's name; the whole text is in --json's output.
            errors += f" ({idle['first_error'].split(':')[0][:24]})"
        rows += [
            (f"idle streams held {idle['hold_s']:.0f} s: {IDLE_KINDS.get(kind, kind)}",
             f"{idle['still_open']} of {idle['n']} open",
             f"{IDLE_STREAMS_TARGET}, heartbeats, < {RSS_TARGET_MB:.0f} MB, no errors",
             "met" if _idle_ok(idle) else "MISSED"),
            ("  server RSS before -> peak -> after all hung up",
             arrow(idle["rss_mb"]) + " MB", "", ""),
            ("  heartbeats (fewest, mean on a held stream); errors; closed by server; not open",
             (f"{idle['heartbeats']} ({idle['min_heartbeats']}, "
              f"{idle['heartbeats'] / max(1, idle['opened']):.1f}); {errors}; {idle['ended_early']}; "
              f"{idle['never_opened']}"), "", ""),
            ("  all open after (p95 of one open); CPU ms/s meanwhile: server, client",
             (f"{idle['open_s']:.1f} s ({idle['open_p95_ms']:.0f} ms); "
             f"{idle['open_cpu_ms_per_s']['server']:.0f}, {idle['open_cpu_ms_per_s']['client']:.0f}"),
             "", ""),
            ("  server threads before -> during -> after", arrow(idle["threads"]), "", ""),
            ("  server open files before -> during -> after", arrow(idle["fds"]), "", ""),
            ("  server DB connections before -> during -> after",
             arrow(idle["db_connections"]),
             "SQLite: open db files" if _service_ports()[0] is None else "", ""),
            ("  server CPU ms/s before -> holding the streams -> after; settled in",
             f"{arrow(idle['cpu_ms_per_s'], '{:.0f}')}; {idle['settle_s']:.1f} s", "", ""),
        ]
    return rows


# --- the streams phase alone -------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Only this phase, with the same server, cluster and bench setup as ``bench/run.py``: for
    measuring a change to the streaming path without the whole bench."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import run as bench_run

    parser = argparse.ArgumentParser(description="The event-streams phase of the bench alone.")
    parser.add_argument("--idle-streams", type=int, default=IDLE_STREAMS_TARGET,
                        help=f"idle streams of each kind ({IDLE_STREAMS_TARGET})")
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers (2)")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn processes (1)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    setup = bench_run.bench_setup(args)
    # A directory and queue of its own, so it can run beside a `make bench` without sharing its
    # SQLite file or its tasks (on PostgreSQL, give it its own database in the URL).
    data_dir = bench_run.BENCH_DIR.parent / "bench-streams"
    data_dir.mkdir(parents=True, exist_ok=True)
    setup.env.update(DATA_DIR=str(data_dir), Q_CLUSTER_NAME=f"{bench_run.CLUSTER_NAME}-streams")
    if not args.database_url:
        setup.database = f"SQLite {data_dir.relative_to(bench_run.ROOT)}/db.sqlite3"
    print(f"streams bench: {setup.database}, broker {setup.broker}", flush=True)
    bench_run.manage(setup, "migrate", "--no-input", "-v0")
    bench_run.manage(setup, "flush", "--no-input", "-v0")
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ.update(setup.env)  # server_sample() reads the service ports from here
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from accounts.models import api_key_create

    user = get_user_model().objects.create(username="benchuser")
    _, api_key = api_key_create(user=user, name="bench")
    port = bench_run.free_port()
    children = bench_run.Children(setup.env, data_dir)
    try:
        children.start("server", [
            sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--log-level", "warning",
            "--workers", str(args.server_workers),
        ])
        children.start("qcluster", [sys.executable, "manage.py", "qcluster"])
        base_url = f"http://127.0.0.1:{port}"
        bench_run.wait_ok(base_url, children.check)
        results = streams_measure(
            base_url=base_url, api_key=api_key, server_pgid=children.procs["server"].pid,
            check=children.check, idle_streams=args.idle_streams,
        )
    except (StreamsBenchError, bench_run.BenchError) as exc:
        for name in children.procs:
            print(children.tail(name), file=sys.stderr)
        print(f"streams bench: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop()
    bench_run.print_phase_report(
        streams_report_rows(results), setup=setup, load_before=load_before, results=results,
        json_path=args.json,
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
