"""`make bench`'s runs phase: `runs.wait` of the `echo` graph through the real `langgraph-sdk`.

Measured against the already started uvicorn + qcluster of `bench/run.py`:

1. sequential latency: one sync client (``get_sync_client``) doing ``runs.wait`` one after the
   other on ONE thread (a conversation: its state grows by two messages per run), then the same
   number on no thread (stateless ``/runs/wait``: a temporary thread per run, deleted after);
2. throughput: 8 async clients (``get_client``), each on a thread of its own, each doing
   ``runs.wait`` back to back for a fixed duration; completed runs / elapsed.

Every answer is checked (the echo reply must be there), so an error body never counts as a run.
The peer figures are the real server's on this machine (`langgraph dev`, see
``../shared/langgraph-behaviour.md``, "Peer figures"): about 1 run/s sequentially, 34–49 runs/s
with 8 clients. Targets (issue 3): 20 × and 3 × those.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from collections.abc import Callable
from typing import Any

PEER_SEQUENTIAL_PER_S = 1.0
PEER_CONCURRENT_PER_S = (34.0, 49.0)
SEQUENTIAL_TARGET_PER_S = 20 * PEER_SEQUENTIAL_PER_S
# 3 × the best peer figure, so "met" holds against the whole measured range.
CONCURRENT_TARGET_PER_S = 3 * PEER_CONCURRENT_PER_S[1]


class RunsBenchError(Exception):
    """A run did not answer as the echo graph must: the figures would be meaningless."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def _echo_input(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _check_echo(result: Any, text: str) -> None:
    messages = result.get("messages") if isinstance(result, dict) else None
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("content") != f"echo: {text}":
        raise RunsBenchError(f"runs.wait of echo({text!r}) answered {str(result)[:300]}")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sequential(
    client: Any, thread_id: str | None, n: int, check: Callable[[], None],
    max_seconds: float = math.inf,
) -> tuple[list[float], list[float]]:
    """Latencies of ``n`` waits one after the other (fewer if ``max_seconds`` run out first), and
    when (epoch s) each answer arrived."""
    latencies, answered = [], []
    deadline = time.perf_counter() + max_seconds
    for i in range(n):
        if time.perf_counter() > deadline:
            break
        text = f"seq {i}"
        started = time.perf_counter()
        result = client.runs.wait(thread_id, "echo", input=_echo_input(text))
        latencies.append(time.perf_counter() - started)
        answered.append(time.time())
        _check_echo(result, text)
        if i % 20 == 0:
            check()
    return latencies, answered


def _breakdown(thread_id: str, answered: list[float]) -> dict[str, list[float]]:
    """Where a sequential wait's time goes, from the run rows (ms): created -> claimed by a
    worker (broker pickup), claimed -> ended (the worker: graph, checkpoints, events, finish),
    ended -> the client has the answer (the /wait poll and the response)."""
    from runs.models import Run

    rows = list(
        Run.objects.filter(thread_id=thread_id)
        .order_by("created_at", "run_id")
        .values_list("created_at", "started_at", "ended_at")
    )
    if len(rows) != len(answered) or any(started is None or ended is None for _, started, ended in rows):
        raise RunsBenchError(f"{len(rows)} runs on the bench thread for {len(answered)} waits")
    return {
        "pickup": [1000 * (s - c).total_seconds() for c, s, _ in rows],
        "worker": [1000 * (e - s).total_seconds() for _, s, e in rows],
        "answer": [1000 * (a - e.timestamp()) for (_, _, e), a in zip(rows, answered, strict=True)],
    }


async def _concurrent(
    base_url: str, api_key: str, clients: int, seconds: float
) -> tuple[int, float, list[float]]:
    """(runs completed, first request -> last answer in s, latencies) of ``clients`` SDK clients
    waiting runs back to back on a thread each for ``seconds``."""
    from langgraph_sdk import get_client

    sdks = [get_client(url=base_url, api_key=api_key) for _ in range(clients)]
    try:
        threads = [await sdk.threads.create() for sdk in sdks]
        latencies: list[float] = []
        last_answer = [0.0]
        started = time.perf_counter()
        deadline = started + seconds

        async def loop(sdk: Any, thread_id: str, index: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                text = f"client {index} run {i}"
                sent = time.perf_counter()
                result = await sdk.runs.wait(thread_id, "echo", input=_echo_input(text))
                answered = time.perf_counter()
                _check_echo(result, text)
                latencies.append(answered - sent)
                last_answer[0] = max(last_answer[0], answered)
                i += 1

        await asyncio.gather(
            *(loop(sdk, thread["thread_id"], i) for i, (sdk, thread) in enumerate(zip(sdks, threads, strict=True)))
        )
        return len(latencies), last_answer[0] - started, latencies
    finally:
        for sdk in sdks:
            await sdk.aclose()


def runs_measure(
    *,
    base_url: str,
    api_key: str,
    check: Callable[[], None],
    sequential: int = 100,
    clients: int = 8,
    sequential_max_seconds: float = 15.0,
    concurrent_seconds: float = 10.0,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The runs figures, as ``runs_*`` keys for the bench's results (latencies in ms). Each
    sequential series stops after ``sequential`` waits or ``sequential_max_seconds``.

    ``cpu`` gives the CPU seconds used so far by each child (server, qcluster): with it, the
    concurrent phase also reports CPU per run of each, and of this client process.
    """
    from langgraph_sdk import get_sync_client

    with get_sync_client(url=base_url, api_key=api_key) as client:
        # Every worker process imports and compiles the graph on its first run: not timed.
        warm_thread = client.threads.create()["thread_id"]
        _sequential(client, warm_thread, 6, check)
        _sequential(client, None, 2, check)

        thread_id = client.threads.create()["thread_id"]
        started = time.perf_counter()
        on_thread, answered = _sequential(client, thread_id, sequential, check, sequential_max_seconds)
        on_thread_rate = len(on_thread) / (time.perf_counter() - started)
        breakdown = _breakdown(thread_id, answered)

        started = time.perf_counter()
        stateless, _ = _sequential(client, None, sequential, check, sequential_max_seconds)
        stateless_rate = len(stateless) / (time.perf_counter() - started)
    check()

    cpu_before = cpu() if cpu else {}
    client_before = _own_cpu_seconds()
    done, elapsed, latencies = asyncio.run(_concurrent(base_url, api_key, clients, concurrent_seconds))
    cpu_ms = {
        f"runs_concurrent_cpu_ms_{name}": 1000 * (seconds - cpu_before[name]) / done
        for name, seconds in (cpu() if cpu else {}).items()
    }
    if cpu:
        cpu_ms["runs_concurrent_cpu_ms_client"] = 1000 * (_own_cpu_seconds() - client_before) / done
    check()
    return {
        "runs_sequential_n": len(on_thread),
        "runs_stateless_n": len(stateless),
        "runs_sequential_ms": [1000 * v for v in on_thread],
        "runs_sequential_per_s": on_thread_rate,
        **{f"runs_sequential_{part}_ms": values for part, values in breakdown.items()},
        "runs_stateless_ms": [1000 * v for v in stateless],
        "runs_stateless_per_s": stateless_rate,
        "runs_concurrent_clients": clients,
        "runs_concurrent_n": done,
        "runs_concurrent_per_s": done / elapsed,
        "runs_concurrent_ms": [1000 * v for v in latencies],
        **cpu_ms,
    }


def runs_report_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of the bench's table: (figure, value, target, verdict)."""
    if "runs_sequential_ms" not in results:
        return []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def spread(values: list[float]) -> str:
        return f"{_percentile(values, 0.5):.0f} / {_percentile(values, 0.95):.0f} ms"

    sequential = results["runs_sequential_per_s"]
    concurrent = results["runs_concurrent_per_s"]
    n = results["runs_sequential_n"]
    clients = results["runs_concurrent_clients"]
    rows = [
        (f"runs.wait echo, sequential on one thread ({n}, langgraph-sdk sync)",
         f"{sequential:.1f} /s", f">= {SEQUENTIAL_TARGET_PER_S:.0f} /s (20 x real server's ~1)",
         verdict(sequential >= SEQUENTIAL_TARGET_PER_S)),
        ("  p50 / p95", spread(results["runs_sequential_ms"]), "", ""),
        ("  p50 / p95 created -> claimed (broker pickup)",
         spread(results["runs_sequential_pickup_ms"]), "", ""),
        ("  p50 / p95 claimed -> ended (worker: graph, checkpoints, events)",
         spread(results["runs_sequential_worker_ms"]), "", ""),
        ("  p50 / p95 ended -> answer received (/wait poll, response)",
         spread(results["runs_sequential_answer_ms"]), "", ""),
        (f"runs.wait echo, sequential stateless /runs/wait ({results['runs_stateless_n']})",
         f"{results['runs_stateless_per_s']:.1f} /s", "", ""),
        ("  p50 / p95", spread(results["runs_stateless_ms"]), "", ""),
        ((f"runs.wait echo, {clients} async clients, a thread each "
         f"({results['runs_concurrent_n']} runs)"),
         f"{concurrent:.1f} /s",
         (f">= {CONCURRENT_TARGET_PER_S:.0f} /s (3 x real server's "
         f"{PEER_CONCURRENT_PER_S[0]:.0f}-{PEER_CONCURRENT_PER_S[1]:.0f})"),
         verdict(concurrent >= CONCURRENT_TARGET_PER_S)),
        ("  p50 / p95 per wait", spread(results["runs_concurrent_ms"]), "", ""),
    ]
    if "runs_concurrent_cpu_ms_client" in results:
        parts = {
            name: results.get(f"runs_concurrent_cpu_ms_{name}", 0.0)
            for name in ("server", "qcluster", "client")
        }
        total = sum(parts.values())
        rows.append((
            "  CPU per run: server / cluster / SDK clients (all)",
            " / ".join(f"{value:.1f}" for value in parts.values()) + f" ({total:.1f}) ms",
            f"ceiling on {os.cpu_count()} CPUs: {1000 * (os.cpu_count() or 1) / total:.0f} /s"
            if total else "",
            "",
        ))
    return rows


# --- the runs phase alone ----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Only this phase, with the same server, cluster and bench database as ``bench/run.py``: for
    measuring a change to the runs path without the whole bench's ten minutes."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import run as bench_run

    parser = argparse.ArgumentParser(description="The runs.wait phase of the bench alone.")
    parser.add_argument("--sequential", type=int, default=100, help="waits per sequential series (100)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent async clients (8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="concurrent phase length (10)")
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers (2)")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn processes (1)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--data-dir", type=Path, default=bench_run.BENCH_DIR.parent / "bench-runs",
        help="SQLite file, logs and queue name of this run (var/bench-runs): another directory "
        "lets two runs proceed side by side",
    )
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    setup = bench_run.bench_setup(args)
    # A directory and queue of its own, so it can run beside a `make bench` without sharing its
    # SQLite file or its tasks (on PostgreSQL, give it its own database in the URL).
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    setup.env.update(DATA_DIR=str(data_dir), Q_CLUSTER_NAME=f"{bench_run.CLUSTER_NAME}-{data_dir.name}")
    if not args.database_url:
        setup.database = f"SQLite {data_dir}/db.sqlite3"
    print(f"runs bench: {setup.database}, broker {setup.broker}", flush=True)
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
        results = runs_measure(
            base_url=base_url, api_key=api_key, check=children.check,
            sequential=args.sequential, clients=args.clients,
            concurrent_seconds=args.seconds, cpu=children.cpu_seconds,
        )
    except (RunsBenchError, bench_run.BenchError) as exc:
        for name in children.procs:
            print(children.tail(name), file=sys.stderr)
        print(f"runs bench: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop()
    bench_run.print_phase_report(
        runs_report_rows(results), setup=setup, load_before=load_before, results=results,
        json_path=args.json,
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
