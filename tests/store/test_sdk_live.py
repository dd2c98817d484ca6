"""langgraph-sdk's ``client.store`` against a live server, and a graph using the store in real
runs on a worker: it reads and writes the same items the API shows, per owner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import UnprocessableEntityError

from store.models import StoreItem
from tests.conftest import Cluster, wait_for
from tests.runs.conftest import LiveStack, Server

pytestmark = pytest.mark.live

GRAPHS_CONFIG = Path(__file__).resolve().parent / "langgraph.json"


@pytest.fixture(scope="module")
def store_stack(django_db_setup) -> Iterator[tuple[Server, Cluster]]:
    server = Server(LANGGRAPH_CONFIG=str(GRAPHS_CONFIG))
    # A quick sweeper, so the TTL test sees the cluster delete expired items within a second.
    cluster = Cluster(workers=2, LANGGRAPH_CONFIG=str(GRAPHS_CONFIG), EXECUTIONS_SWEEP_INTERVAL="0.3")
    try:
        yield server, cluster
    finally:
        cluster.stop()
        server.stop()


@pytest.fixture
def live(store_stack, transactional_db, make_user) -> LiveStack:
    from accounts.models import api_key_create

    server, cluster = store_stack
    keys = [api_key_create(user=make_user(name))[1] for name in ("live", "other")]
    return LiveStack(server.url, keys[0], keys[1], server, cluster)


def test_sdk_store_methods_sync(live: LiveStack) -> None:
    client = get_sync_client(url=live.url, api_key=live.api_key)
    other = get_sync_client(url=live.url, api_key=live.other_api_key)
    client.store.put_item(["users", "u1"], "prefs", {"theme": "dark", "level": 3})
    client.store.put_item(["users", "u2"], "prefs", {"theme": "light", "level": 7}, ttl=60)
    item = client.store.get_item(["users", "u1"], "prefs")
    assert item is not None
    assert item["namespace"] == ["users", "u1"] and item["value"] == {"theme": "dark", "level": 3}
    assert client.store.get_item(["users", "u1"], "nothing") is None

    found = client.store.search_items(["users"], filter={"level": {"$gte": 5}})
    assert [(i["key"], i["namespace"], i["score"]) for i in found["items"]] == [("prefs", ["users", "u2"], None)]
    page = client.store.search_items(["users"], limit=1, offset=1)
    assert [i["namespace"] for i in page["items"]] == [["users", "u1"]]  # latest update first

    listed = client.store.list_namespaces(prefix=["users"], max_depth=1)
    assert listed == {"namespaces": [["users"]]}
    assert client.store.list_namespaces(suffix=["u2"]) == {"namespaces": [["users", "u2"]]}

    # Another user's store is another store.
    assert other.store.get_item(["users", "u1"], "prefs") is None
    assert other.store.search_items(["users"]) == {"items": []}
    assert other.store.list_namespaces() == {"namespaces": []}

    client.store.delete_item(["users", "u1"], "prefs")
    assert client.store.get_item(["users", "u1"], "prefs") is None
    with pytest.raises(UnprocessableEntityError):
        client.store.search_items(["users"], query="who likes dark themes?")


def test_sdk_store_methods_async(live: LiveStack) -> None:
    async def scenario() -> None:
        client = get_client(url=live.url, api_key=live.api_key)
        await client.store.put_item(["a"], "k", {"n": 1})
        item = await client.store.get_item(["a"], "k", refresh_ttl=False)
        assert item is not None and item["value"] == {"n": 1}
        assert (await client.store.search_items(["a"], filter={"n": 1}))["items"][0]["key"] == "k"
        await client.store.delete_item(["a"], "k")
        assert await client.store.get_item(["a"], "k") is None

    asyncio.run(scenario())


def test_a_graph_remembers_a_fact_across_threads(live: LiveStack) -> None:
    client = get_sync_client(url=live.url, api_key=live.api_key)
    other = get_sync_client(url=live.url, api_key=live.other_api_key)
    client.store.put_item(["memories"], "from-api", {"fact": "put through the API"})

    first = client.threads.create()
    result = client.runs.wait(first["thread_id"], "memory", input={"fact": "likes tea"})
    assert result["recalled"] == ["likes tea", "put through the API"]

    # Another thread of the same user recalls the fact the first run stored.
    second = client.threads.create()
    result = client.runs.wait(second["thread_id"], "memory", input={})
    assert result["recalled"] == ["likes tea", "put through the API"]

    # What the node wrote through its store parameter is what the API shows.
    stored = client.store.search_items(["memories"], filter={"fact": "likes tea"})["items"]
    assert len(stored) == 1 and stored[0]["namespace"] == ["memories"]

    # Another user's run has its own store.
    assert other.runs.wait(None, "memory", input={"fact": "likes coffee"})["recalled"] == ["likes coffee"]
    assert [i["value"]["fact"] for i in client.store.search_items(["memories"], limit=10)["items"]] == [
        "likes tea", "put through the API",
    ]


def test_the_cluster_sweeps_expired_items(live: LiveStack) -> None:
    client = get_sync_client(url=live.url, api_key=live.api_key)
    client.store.put_item(["t"], "short", {"v": 1}, ttl=1)
    client.store.put_item(["t"], "long", {"v": 2}, ttl=60)
    client.store.put_item(["t"], "forever", {"v": 3})
    assert StoreItem.objects.count() == 3
    # A minute is long for a test: the item's expiry is moved into the past instead.
    StoreItem.objects.filter(key="short").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.store.get_item(["t"], "short") is None  # gone for readers at once
    wait_for(lambda: not StoreItem.objects.filter(key="short").exists(), timeout=15, message="no sweep")
    assert sorted(i["key"] for i in client.store.search_items(["t"])["items"]) == ["forever", "long"]
