"""Crons through the official langgraph-sdk against a real server and worker cluster: the
operations the SDK has, and (slow) one-minute crons firing on the workers' own clock."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from tests.conftest import Cluster, figure, wait_for
from tests.runs.conftest import GRAPHS_CONFIG

pytestmark = pytest.mark.live

ECHO_ASSISTANT_ID = "046b5dc7-2108-582c-9c6c-31d556d138f0"
TICK = {"messages": [{"role": "user", "content": "tick"}]}


def test_crons_through_the_sdk(live) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        other = get_client(url=live.url, api_key=live.other_api_key)
        thread = await client.threads.create()
        end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        on_thread = await client.crons.create_for_thread(
            thread["thread_id"], "echo", schedule="0 9 * * 1-5", input=TICK,
            metadata={"team": "ops"}, multitask_strategy="reject", timezone="Europe/Paris",
            end_time=end,
        )
        assert on_thread["thread_id"] == thread["thread_id"]
        assert on_thread["assistant_id"] == ECHO_ASSISTANT_ID
        assert on_thread["timezone"] == "Europe/Paris"
        assert datetime.fromisoformat(on_thread["end_time"]) == end
        assert on_thread["payload"]["multitask_strategy"] == "reject"
        stateless = await client.crons.create(
            "echo", schedule="*/15 * * * *", input=TICK, on_run_completed="keep", enabled=False
        )
        assert stateless["thread_id"] is None and stateless["enabled"] is False

        found = await client.crons.search(assistant_id=ECHO_ASSISTANT_ID)
        assert {c["cron_id"] for c in found} == {on_thread["cron_id"], stateless["cron_id"]}
        assert [c["cron_id"] for c in await client.crons.search(thread_id=thread["thread_id"])] == [
            on_thread["cron_id"]
        ]
        assert [c["cron_id"] for c in await client.crons.search(enabled=False)] == [stateless["cron_id"]]
        only_ids = await client.crons.search(select=["cron_id"], sort_by="next_run_date", sort_order="asc")
        assert all(list(c) == ["cron_id"] for c in only_ids)
        assert await client.crons.count() == 2
        assert await client.crons.count(metadata={"team": "ops"}) == 1
        with pytest.raises(UnprocessableEntityError):
            await client.crons.search(assistant_id="echo")  # a graph id: the real server's 422 too

        updated = await client.crons.update(stateless["cron_id"], enabled=True, schedule="0 * * * *")
        assert updated["enabled"] is True and updated["schedule"] == "0 * * * *"
        assert datetime.fromisoformat(updated["next_run_date"]).minute == 0
        cleared = await client.crons.update(on_thread["cron_id"], end_time=None)
        assert cleared["end_time"] is None

        # Another user sees none of them and can touch none.
        assert await other.crons.count() == 0
        with pytest.raises(NotFoundError):
            await other.crons.delete(on_thread["cron_id"])
        with pytest.raises(NotFoundError):
            await other.crons.update(on_thread["cron_id"], enabled=False)

        await client.crons.delete(on_thread["cron_id"])
        with pytest.raises(NotFoundError):
            await client.crons.delete(on_thread["cron_id"])
        assert await client.crons.count() == 1
        info = httpx.get(f"{live.url}/info").json()
        assert info["flags"]["crons"] is True

    asyncio.run(scenario())


@pytest.fixture
def second_cluster(live):
    cluster = Cluster(workers=2, LANGGRAPH_CONFIG=str(GRAPHS_CONFIG))
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_one_minute_crons_fire_within_70_s_and_stop_when_deleted(live, second_cluster) -> None:
    """Five thread crons and a stateless one, every minute, swept by two clusters of two workers
    (each worker every EXECUTIONS_SWEEP_INTERVAL = 5 s): each fires within 70 s, then once a
    minute, exactly once per minute, and never after it is deleted. Lateness: the run's creation
    after the minute it was due."""
    client = get_sync_client(url=live.url, api_key=live.api_key)
    threads = [client.threads.create()["thread_id"] for _ in range(5)]
    crons = [
        client.crons.create_for_thread(thread_id, "echo", schedule="* * * * *", input=TICK)
        for thread_id in threads
    ]
    crons.append(
        client.crons.create(
            "echo", schedule="* * * * *", input=TICK, on_run_completed="keep", metadata={"cron": "stateless"}
        )
    )
    created = time.monotonic()

    def runs() -> list[dict]:
        found = [run for thread_id in threads for run in client.runs.list(thread_id, limit=100)]
        for thread in client.threads.search(metadata={"cron": "stateless"}, limit=100):
            found += client.runs.list(thread["thread_id"], limit=100)
        return found

    # The first firing of each within 70 s of its creation.
    wait_for(
        lambda: len(runs()) >= len(crons), timeout=70, interval=1,
        message=lambda: f"{len(runs())} runs of {len(crons)} crons; cluster log:\n{live.cluster.log()[-4000:]}",
    )
    assert time.monotonic() - created < 70
    # A second minute, for more lateness samples.
    wait_for(lambda: len(runs()) >= 2 * len(crons), timeout=70, interval=1, message="the second firings")
    fired = runs()
    # Exactly once per minute: never two runs of one cron in the same minute, whichever of the
    # four sweeping workers fired it.
    for thread_id in threads:
        minutes = [
            datetime.fromisoformat(run["created_at"]).replace(second=0, microsecond=0)
            for run in client.runs.list(thread_id, limit=100)
        ]
        assert len(minutes) == len(set(minutes)), minutes
    kept = client.threads.search(metadata={"cron": "stateless"}, limit=100)
    minutes = [datetime.fromisoformat(t["created_at"]).replace(second=0, microsecond=0) for t in kept]
    assert len(minutes) == len(set(minutes)), minutes
    late = []
    for run in fired:
        at = datetime.fromisoformat(run["created_at"])
        late.append((at - at.replace(second=0, microsecond=0)).total_seconds())
    assert max(late) < 30, late
    late.sort()
    p95 = late[min(len(late) - 1, round(0.95 * (len(late) - 1)))]
    figure(
        f"cron firing lateness (sweep every 5 s per worker, 2 clusters of 2 workers, {len(late)} firings): "
        f"p50 {statistics.median(late):.1f} s, p95 {p95:.1f} s after the minute"
    )
    # Every run goes through a worker like any other.
    wait_for(
        lambda: all(run["status"] == "success" for run in runs()), timeout=30, interval=0.5,
        message="the cron runs to succeed",
    )

    for cron in crons:
        client.crons.delete(cron["cron_id"])
    count = len(runs())
    time.sleep(65)
    assert len(runs()) == count
