"""Many graph runs in flight in one worker process (``RUNS_CONCURRENCY_PER_WORKER``), through the
real API, langgraph-sdk and a real one-worker cluster: runs overlap, and one run cancelled, timed
out, failing or sleeping in a sync node leaves the others alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from langgraph_sdk import get_client, get_sync_client

from runs.models import Run, RunEvent, RunStatus
from tests.conftest import ROOT, Cluster, figure, wait_for
from tests.runs.conftest import LiveStack, Server, _let_the_cluster_go_idle

pytestmark = pytest.mark.live

GRAPHS = ROOT / "tests" / "runs" / "concurrency" / "langgraph.json"
RUN_TIMEOUT = 5  # RUNS_TIMEOUT of the cluster: a run past it ends `timeout`


@pytest.fixture(scope="module")
def stack(django_db_setup) -> Iterator[tuple[Server, Cluster]]:
    server = Server(LANGGRAPH_CONFIG=str(GRAPHS))
    cluster = Cluster(
        workers=1, LANGGRAPH_CONFIG=str(GRAPHS), RUNS_CONCURRENCY_PER_WORKER="25",
        RUNS_TIMEOUT=str(RUN_TIMEOUT), WORKER_LOOP_BLOCK_WARN_SECONDS="1",
        LOG_LEVEL="INFO",  # django-q2 says "ready for work" at INFO
    )
    try:
        # Started and reading the broker: the runs' timings below are the worker's, not its start.
        wait_for(lambda: "ready for work" in cluster.log(), timeout=60, message=cluster.log)
        yield server, cluster
    finally:
        cluster.stop()
        server.stop()


@pytest.fixture
def live(stack, transactional_db, make_user) -> Iterator[LiveStack]:
    from accounts.models import api_key_create

    server, cluster = stack
    keys = [api_key_create(user=make_user(name))[1] for name in ("live", "other")]
    yield LiveStack(server.url, keys[0], keys[1], server, cluster)
    _let_the_cluster_go_idle()


def nap(label: str, how: str = "await", seconds: float = 2.0) -> dict:
    return {"label": label, "how": how, "seconds": seconds}


async def start_runs(live: LiveStack, inputs: dict[str, dict]) -> dict[str, dict]:
    """One thread and one background run per input, created together; the runs by label."""
    client = get_client(url=live.url, api_key=live.api_key)
    threads = await asyncio.gather(*(client.threads.create() for _ in inputs))
    runs = await asyncio.gather(*(
        client.runs.create(thread["thread_id"], "naps", input=body, stream_mode=["values", "updates"])
        for thread, body in zip(threads, inputs.values(), strict=True)
    ))
    return dict(zip(inputs, runs, strict=True))


def test_twenty_runs_overlap_on_one_worker_and_one_going_wrong_leaves_the_others_alone(live) -> None:
    sleepers = {f"sleeper-{n}": nap(f"sleeper-{n}") for n in range(16)}
    inputs = {
        **sleepers,
        "sync": nap("sync", "sync"),
        "raises": nap("raises", "raise"),
        "times-out": nap("times-out", seconds=60),
        "cancelled": nap("cancelled", seconds=60),
    }
    started = time.monotonic()
    runs = asyncio.run(start_runs(live, inputs))
    ids = {label: run["run_id"] for label, run in runs.items()}

    def status(label: str) -> str:
        return Run.objects.get(pk=ids[label]).status

    wait_for(lambda: status("cancelled") == RunStatus.RUNNING, timeout=20,
             message=lambda: live.cluster.log()[-3000:])
    cancelled_at = time.monotonic()
    client = get_sync_client(url=live.url, api_key=live.api_key)
    client.runs.cancel(runs["cancelled"]["thread_id"], ids["cancelled"])
    wait_for(lambda: status("cancelled") == RunStatus.INTERRUPTED, timeout=5)
    cancel_took = time.monotonic() - cancelled_at

    finishers = [*sleepers, "sync"]
    wait_for(lambda: all(status(label) == RunStatus.SUCCESS for label in finishers), timeout=30,
             message=lambda: f"{ {label: status(label) for label in inputs} }\n{live.cluster.log()[-3000:]}")
    all_done = time.monotonic() - started
    wait_for(lambda: status("times-out") == RunStatus.TIMEOUT, timeout=RUN_TIMEOUT + 15)
    assert status("raises") == RunStatus.ERROR

    rows = {label: Run.objects.get(pk=ids[label]) for label in inputs}
    # One worker process ran them all, at the same time: every running interval intersects.
    assert len({rows[label].worker for label in finishers}) == 1
    latest_start = max(rows[label].started_at for label in finishers)
    earliest_end = min(rows[label].ended_at for label in finishers)
    assert latest_start < earliest_end
    # Each run has its own events and its own thread's checkpoints.
    for label in finishers:
        run = rows[label]
        assert run.result["log"] == [f"{label} done"]
        events = list(RunEvent.objects.filter(run_id=run.pk).order_by("seq").values_list("event", "data"))
        assert events[0][0] == "metadata" and str(run.pk) in events[0][1]
        assert any(event == "updates" and f"{label} done" in data for event, data in events)
        state = client.threads.get_state(runs[label]["thread_id"])
        assert state["values"]["log"] == [f"{label} done"]
    assert "raises failed on purpose" in rows["raises"].error["message"]
    assert rows["times-out"].error["error"] == "TimeoutError"
    assert cancel_took < 2.0
    figure(f"20 runs (16 awaiting 2 s, 1 sync node sleeping 2 s, 1 failing, 1 timed out, 1 cancelled) "
           f"on 1 worker process: the 17 sleepers all done {all_done:.1f} s after their creation; "
           f"cancel took {cancel_took:.2f} s")


def test_a_run_blocking_the_event_loop_is_logged_with_its_graph_and_node(live) -> None:
    log_start = len(live.cluster.log())
    runs = asyncio.run(start_runs(live, {"blocker": nap("blocker", "block", 2.5), "waiter": nap("waiter", seconds=1)}))
    wait_for(lambda: Run.objects.filter(pk__in=[r["run_id"] for r in runs.values()],
                                        status=RunStatus.SUCCESS).count() == 2, timeout=20)
    wait_for(lambda: "event loop has been blocked" in live.cluster.log()[log_start:], timeout=5)
    log = live.cluster.log()[log_start:]
    assert "node 'nap'" in log and runs["blocker"]["thread_id"] in log
