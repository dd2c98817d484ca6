"""What a scrape of GET /metrics costs (`make bench-metrics`): target ≤ 20 ms.

On a SQLite database of its own (var/bench-metrics) holding ``--executions`` executions (90 %
completed, some pending and running) and as many runs' worth of queue, with the metric files of
``--processes`` processes that each counted jobs of 20 targets in every status and requests on
60 routes (what a long-lived deployment with recycled workers leaves), it times ``--scrapes``
scrapes through Django's test client (the view, the database reads and the file merge; no
network). Prints wall and CPU p50/p95 and the size of the answer; exit 0 when measured, met or
not. The first scrape folds the dead processes' files into the archive, as in production.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA_DIR = ROOT / "var" / "bench-metrics"
TARGET_MS = 20.0
TARGETS = [f"target_{n}" for n in range(20)]
STATUSES = ("completed", "failed", "cancelled", "retrying", "timeout")
ROUTES = [f"/api/v1/route_{n}/{{pk}}" for n in range(60)]


def _environment() -> None:
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ["DATA_DIR"] = str(DATA_DIR)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(DATA_DIR / "prometheus")
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ["ACCESS_LOG"] = "0"


def fill_one_process() -> None:
    """Run in a child: count what a busy worker and API process would."""
    from project import telemetry

    for kind in ("execution", "run"):
        for target in TARGETS:
            telemetry.job_created(kind=kind, target=target)
            for status in STATUSES:
                telemetry.instruments().jobs_finished.labels(kind, target, status).inc()
                telemetry.instruments().job_duration.labels(kind, target).observe(1.5)
    for route in ROUTES:
        for method, status in (("GET", 200), ("POST", 201), ("GET", 404)):
            telemetry.http_answered(route=route, method=method, status=status, seconds=0.01)
    for outcome in ("delivered", "retrying", "failed"):
        telemetry.webhook_attempted(outcome=outcome)


def _load_rows(executions: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from executions.models import Execution, ExecutionStatus

    if Execution.objects.count() == executions:
        return
    Execution.objects.all().delete()
    now = timezone.now()
    statuses = [ExecutionStatus.COMPLETED] * 90 + [ExecutionStatus.FAILED] * 8 + [
        ExecutionStatus.PENDING, ExecutionStatus.RUNNING
    ]
    batch = []
    for n in range(executions):
        batch.append(Execution(
            type="agent", target_id=TARGETS[n % len(TARGETS)], status=statuses[n % len(statuses)],
        ))
        if len(batch) == 5000:
            Execution.objects.bulk_create(batch)
            batch = []
    Execution.objects.bulk_create(batch)
    # auto_now_add stamped them all now: spread them over 90 days.
    Execution.objects.update(created_at=now - timedelta(days=90))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=40)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _environment()
    if args.fill:
        fill_one_process()
        return 0

    shutil.rmtree(DATA_DIR / "prometheus", ignore_errors=True)
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    started = time.monotonic()
    _load_rows(args.executions)
    print(f"{args.executions:,} executions ready in {time.monotonic() - started:.1f}s")
    for _ in range(args.processes):  # one after the other: each leaves files under its own pid
        subprocess.run([sys.executable, __file__, "--fill"], check=True)
    files = len(list((DATA_DIR / "prometheus").glob("*.db")))

    client = Client()
    client.get("/metrics")  # imports and the first connection are not a scrape's cost
    timings, cpu, size = [], [], 0
    for _ in range(args.scrapes):
        clock, cpu_clock = time.perf_counter(), time.process_time()
        response = client.get("/metrics")
        timings.append((time.perf_counter() - clock) * 1000)
        cpu.append((time.process_time() - cpu_clock) * 1000)
        assert response.status_code == 200, response.content[:500]
        size = len(response.content)
    p50 = statistics.median(timings)
    p95 = sorted(timings)[max(0, round(len(timings) * 0.95) - 1)]
    print(f"GET /metrics: {args.scrapes} scrapes, {files} metric files of {args.processes} "
          f"processes, {size:,} bytes each")
    print(f"  wall p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(timings):.1f} ms "
          f"(target p95 <= {TARGET_MS:.0f} ms: {'met' if p95 <= TARGET_MS else 'NOT met'})")
    # CPU time moves far less than wall time with a loaded machine's other work.
    print(f"  CPU  p50 {statistics.median(cpu):.1f} ms, min {min(cpu):.1f} ms, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
