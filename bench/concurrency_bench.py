"""`make bench`'s concurrency phase: graph runs that wait, many at once per worker process.

Measured against the already started uvicorn + qcluster of `bench/run.py` (whose workers run up to
``RUNS_CONCURRENCY_PER_WORKER`` runs each, set high enough by the bench for the figures below):

1. burst: ``BURST`` runs of the ``echo`` graph with ``"sleep": 2`` (a stand-in for one 2-second
   model call), each on a thread of its own, all started together through langgraph-sdk's async
   client (``runs.wait``): time until the last answer, runs/s, p50 / p95 per wait. Target (issue
   12): all done in <= 4 s with 2 workers (>= 25 runs/s, 0.98 /s before), p95 <= 3 s.
2. the same burst of ``async def`` executions: ``BURST`` executions of the ``wait`` agent
   (``seconds``: 2) created together through the Executions API; time until the last completed,
   p50 / p95 of created -> completed from their rows. Same targets.
3. memory: ``IN_FLIGHT`` such runs (sleeping ``IN_FLIGHT_SLEEP`` s) created through the API and
   in flight at once; the cluster's resident memory (every process of its group) before and
   while they run, divided by the runs in flight. Target: < 2 MB per run.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BURST = 100
BURST_SLEEP = 2.0
BURST_TARGET_S = 4.0
BURST_P95_TARGET_S = 3.0
IN_FLIGHT = 1000
IN_FLIGHT_SLEEP = 60.0  # long enough for 1,000 creates through one API process to overlap
MB_PER_RUN_TARGET = 2.0
# Runs in flight per worker the bench's cluster allows: the memory phase's 1,000 on 2 workers.
BENCH_RUNS_CONCURRENCY = 500


class ConcurrencyBenchError(Exception):
    """A run did not answer as the echo graph must: the figures would be meaningless."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the group (the cluster: main, sentinel, workers)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., rss is 24th
            total += int(fields[21]) * page
    return total


async def _burst(base_url: str, api_key: str, count: int) -> tuple[float, list[float]]:
    from langgraph_sdk import get_client

    client = get_client(url=base_url, api_key=api_key)
    threads = await asyncio.gather(*(client.threads.create() for _ in range(count)))

    async def one(thread_id: str, n: int) -> float:
        started = time.perf_counter()
        text = f"burst {n}"
        result = await client.runs.wait(
            thread_id, "echo", input={"messages": [{"role": "user", "content": text}], "sleep": BURST_SLEEP}
        )
        last = (result.get("messages") or [{}])[-1] if isinstance(result, dict) else {}
        if not isinstance(last, dict) or last.get("content") != f"echo: {text}":
            raise ConcurrencyBenchError(f"runs.wait of echo({text!r}) answered {str(result)[:300]}")
        return time.perf_counter() - started

    started = time.perf_counter()
    latencies = await asyncio.gather(*(one(thread["thread_id"], n) for n, thread in enumerate(threads)))
    return time.perf_counter() - started, list(latencies)


async def _executions_burst(base_url: str, api_key: str, count: int) -> list[str]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=60, limits=httpx.Limits(max_connections=count)) as client:
        async def one() -> str:
            response = await client.post("/api/v1/executions", json={
                "type": "agent", "target_id": "wait", "inputs": {"seconds": BURST_SLEEP}})
            if response.status_code != 201:
                raise ConcurrencyBenchError(
                    f"POST /api/v1/executions answered {response.status_code}: {response.text[:300]}"
                )
            return response.json()["execution_id"]

        return list(await asyncio.gather(*(one() for _ in range(count))))


def _executions_measure(base_url: str, api_key: str, count: int) -> tuple[float, list[float]]:
    from executions.models import Execution, ExecutionStatus

    started = time.perf_counter()
    ids = asyncio.run(_executions_burst(base_url, api_key, count))
    deadline = time.monotonic() + 120
    while Execution.objects.filter(pk__in=ids, status__in=[ExecutionStatus.PENDING, ExecutionStatus.RUNNING]).exists():
        if time.monotonic() > deadline:
            raise ConcurrencyBenchError("the async executions did not end within 2 minutes")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    rows = list(Execution.objects.filter(pk__in=ids).values_list("status", "created_at", "completed_at"))
    if any(status != ExecutionStatus.COMPLETED for status, _, _ in rows):
        raise ConcurrencyBenchError(f"async executions ended {sorted({status for status, _, _ in rows})}")
    return elapsed, [(completed - created).total_seconds() for _, created, completed in rows]


async def _in_flight(base_url: str, api_key: str, count: int) -> list[str]:
    from langgraph_sdk import get_client

    client = get_client(url=base_url, api_key=api_key)
    semaphore = asyncio.Semaphore(50)  # the server's connections, not the runs, are bounded

    async def one(n: int) -> str:
        async with semaphore:
            thread = await client.threads.create()
            run = await client.runs.create(
                thread["thread_id"], "echo",
                input={"messages": [{"role": "user", "content": f"m {n}"}], "sleep": IN_FLIGHT_SLEEP},
            )
            return run["run_id"]

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def concurrency_measure(
    *, base_url: str, api_key: str, check: Callable[[], None], cluster_pgid: int,
    burst: int = BURST, in_flight: int = IN_FLIGHT,
) -> dict[str, Any]:
    """The concurrency figures, as ``concurrency_*`` keys for the bench's results."""
    from runs.models import Run, RunStatus

    # Every worker process imports and compiles the graph on its first runs: not measured.
    asyncio.run(_burst(base_url, api_key, 8))
    elapsed, latencies = asyncio.run(_burst(base_url, api_key, burst))
    check()
    _executions_measure(base_url, api_key, 8)  # the wait agent's first runs: not measured
    executions_elapsed, executions_latencies = _executions_measure(base_url, api_key, burst)
    check()

    rss_before = group_rss_bytes(cluster_pgid)
    run_ids = asyncio.run(_in_flight(base_url, api_key, in_flight))
    deadline = time.monotonic() + IN_FLIGHT_SLEEP / 2
    peak_running, rss_at_peak = 0, rss_before
    while time.monotonic() < deadline:
        running = Run.objects.filter(pk__in=run_ids, status=RunStatus.RUNNING).count()
        if running > peak_running:
            peak_running, rss_at_peak = running, group_rss_bytes(cluster_pgid)
        if running >= in_flight:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # every run past its first steps, waiting in its node
    rss_at_peak = max(rss_at_peak, group_rss_bytes(cluster_pgid))
    check()
    # Let them end before the next phase: they were sleeping, the rest is quick.
    end_deadline = time.monotonic() + IN_FLIGHT_SLEEP + 60
    while Run.objects.filter(pk__in=run_ids, status__in=[RunStatus.PENDING, RunStatus.RUNNING]).exists():
        if time.monotonic() > end_deadline:
            raise ConcurrencyBenchError("the in-flight runs did not end within a minute of their sleep")
        time.sleep(0.5)
    failed = Run.objects.filter(pk__in=run_ids).exclude(status=RunStatus.SUCCESS).count()
    if failed:
        raise ConcurrencyBenchError(f"{failed} of the {in_flight} in-flight runs did not succeed")
    return {
        "concurrency_burst_n": burst,
        "concurrency_burst_s": elapsed,
        "concurrency_burst_per_s": burst / elapsed,
        "concurrency_burst_ms": [1000 * v for v in latencies],
        "concurrency_executions_s": executions_elapsed,
        "concurrency_executions_per_s": burst / executions_elapsed,
        "concurrency_executions_ms": [1000 * v for v in executions_latencies],
        "concurrency_in_flight": peak_running,
        "concurrency_rss_before_mb": rss_before / 2**20,
        "concurrency_rss_in_flight_mb": rss_at_peak / 2**20,
        "concurrency_mb_per_run": (rss_at_peak - rss_before) / 2**20 / max(1, peak_running),
    }


def concurrency_report_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of the bench's table: (figure, value, target, verdict)."""
    if "concurrency_burst_s" not in results:
        return []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    latencies = results["concurrency_burst_ms"]
    p95 = _percentile(latencies, 0.95)
    executions = results["concurrency_executions_ms"]
    executions_p95 = _percentile(executions, 0.95)
    per_run = results["concurrency_mb_per_run"]
    return [
        (f"runs.wait echo sleeping {BURST_SLEEP:.0f} s, {results['concurrency_burst_n']} at once, a thread each",
         f"{results['concurrency_burst_s']:.2f} s ({results['concurrency_burst_per_s']:.1f} /s)",
         f"<= {BURST_TARGET_S:.0f} s", verdict(results["concurrency_burst_s"] <= BURST_TARGET_S)),
        ("  p50 / p95 per wait", f"{_percentile(latencies, 0.5):.0f} / {p95:.0f} ms",
         f"p95 <= {1000 * BURST_P95_TARGET_S:.0f} ms", verdict(p95 <= 1000 * BURST_P95_TARGET_S)),
        (f"async executions of `wait` ({BURST_SLEEP:.0f} s), {results['concurrency_burst_n']} created at once",
         f"{results['concurrency_executions_s']:.2f} s ({results['concurrency_executions_per_s']:.1f} /s)",
         f"<= {BURST_TARGET_S:.0f} s", verdict(results["concurrency_executions_s"] <= BURST_TARGET_S)),
        ("  p50 / p95 created -> completed", f"{_percentile(executions, 0.5):.0f} / {executions_p95:.0f} ms",
         f"p95 <= {1000 * BURST_P95_TARGET_S:.0f} ms", verdict(executions_p95 <= 1000 * BURST_P95_TARGET_S)),
        (f"cluster memory per run in flight ({results['concurrency_in_flight']} sleeping echo runs)",
         f"{per_run:.2f} MB", f"< {MB_PER_RUN_TARGET:.0f} MB", verdict(per_run < MB_PER_RUN_TARGET)),
        ("  cluster RSS idle / with them in flight",
         f"{results['concurrency_rss_before_mb']:.0f} / {results['concurrency_rss_in_flight_mb']:.0f} MB", "", ""),
    ]


def main(argv: list[str]) -> int:
    """Only this phase, with the same server, cluster and bench setup as ``bench/run.py``."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import run as bench_run

    parser = argparse.ArgumentParser(description="The concurrency phase of the bench alone.")
    parser.add_argument("--burst", type=int, default=BURST, help=f"runs started together ({BURST})")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help=f"runs in flight for memory ({IN_FLIGHT})")
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers (2)")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn processes (1)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--data-dir", type=Path, default=bench_run.BENCH_DIR.parent / "bench-concurrency",
                        help="SQLite file, logs and queue name of this run (var/bench-concurrency)")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    setup = bench_run.bench_setup(args)
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    setup.env.update(DATA_DIR=str(data_dir), Q_CLUSTER_NAME=f"{bench_run.CLUSTER_NAME}-{data_dir.name}")
    if not args.database_url:
        setup.database = f"SQLite {data_dir}/db.sqlite3"
    print(f"concurrency bench: {setup.database}, broker {setup.broker}", flush=True)
    bench_run.manage(setup, "migrate", "--no-input", "-v0")
    bench_run.manage(setup, "flush", "--no-input", "-v0")
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ.update(setup.env)
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
        results = concurrency_measure(
            base_url=base_url, api_key=api_key, check=children.check,
            cluster_pgid=children.procs["qcluster"].pid, burst=args.burst, in_flight=args.in_flight,
        )
    except (ConcurrencyBenchError, bench_run.BenchError) as exc:
        for name in children.procs:
            print(children.tail(name), file=sys.stderr)
        print(f"concurrency bench: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop()
    bench_run.print_phase_report(
        concurrency_report_rows(results), setup=setup, load_before=load_before, results=results,
        json_path=args.json,
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
