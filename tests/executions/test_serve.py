"""`manage.py serve` under Ctrl-C: the server, the cluster's sentinel and every worker are gone
soon after, even with graph runs in flight, and those runs go back to the queue at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from runs.models import Run, RunStatus
from tests.conftest import ROOT, figure, subprocess_env, wait_for
from tests.faults.conftest import process_alive
from tests.runs.conftest import free_port

GRAPHS = ROOT / "tests" / "runs" / "concurrency" / "langgraph.json"
GRACE = 3  # WORKER_GRACE_SECONDS: runs still going after it are released
LEFT_WITHIN = 20.0


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


async def start_sleeping_runs(url: str, api_key: str, count: int) -> list[str]:
    client = get_client(url=url, api_key=api_key)
    threads = await asyncio.gather(*(client.threads.create() for _ in range(count)))
    runs = await asyncio.gather(*(
        client.runs.create(thread["thread_id"], "naps", input={"label": "long", "seconds": 60})
        for thread in threads
    ))
    return [run["run_id"] for run in runs]


def ctrl_c_once(api_key: str, attempt: int) -> float:
    """Start serve, put 4 long runs in flight, press Ctrl-C: seconds until no process is left."""
    port = free_port()
    log_path = ROOT / "var" / f"serve-{os.getpid()}-{attempt}.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT,
            env=subprocess_env(WORKER_GRACE_SECONDS=str(GRACE), LANGGRAPH_CONFIG=str(GRAPHS), Q_WORKERS="2"),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            try:
                return httpx.get(f"{url}/ok", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        def said() -> str:
            return log_path.read_text(errors="replace")[-4000:]

        wait_for(serving, timeout=60, message=said)
        run_ids = asyncio.run(start_sleeping_runs(url, api_key, 4))
        wait_for(lambda: Run.objects.filter(pk__in=run_ids, status=RunStatus.RUNNING).count() == 4,
                 timeout=30, message=said)
        processes = descendants(serve.pid) | {serve.pid}
        assert len(processes) >= 5  # serve, uvicorn, qcluster, its sentinel, 2 workers
        pressed = time.monotonic()
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C in serve's terminal
        wait_for(lambda: not any(process_alive(pid) for pid in processes), timeout=LEFT_WITHIN,
                 message=lambda: f"{[p for p in processes if process_alive(p)]} alive; {said()}")
        gone_after = time.monotonic() - pressed
        # The runs still going after the grace went back to the queue, their checkpoints gone.
        released = Run.objects.filter(pk__in=run_ids)
        assert {run.status for run in released} == {RunStatus.PENDING}, [(run.status, run.error) for run in released]
        return gone_after
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()
        log_path.unlink(missing_ok=True)


@pytest.mark.slow
def test_ctrl_c_of_serve_leaves_no_process_five_times_in_a_row(transactional_db, make_user) -> None:
    from accounts.models import api_key_create

    api_key = api_key_create(user=make_user("serve"))[1]
    times = [ctrl_c_once(api_key, attempt) for attempt in range(5)]
    assert max(times) < LEFT_WITHIN
    figure(f"Ctrl-C of serve with 4 runs in flight (grace {GRACE} s): every process gone after "
           f"{', '.join(f'{t:.1f}' for t in times)} s")
