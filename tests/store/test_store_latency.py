"""Store operation latency through langgraph-sdk against a live server, with 10,000 items in
the searched namespace: p50 of put, get, and a filtered search (the issue's figures)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from langgraph_sdk import get_sync_client

from accounts.models import api_key_create
from store.models import StoreItem
from tests.conftest import figure
from tests.runs.conftest import Server
from tests.store.embed import VOCABULARY, vector

pytestmark = [pytest.mark.slow, pytest.mark.live]

ITEMS = 10_000
SAMPLES = 100


@pytest.fixture
def server(transactional_db) -> Iterator[Server]:
    # With the test embedding as store.index, for the semantic search figure.
    server = Server(LANGGRAPH_CONFIG=str(Path(__file__).resolve().parent / "langgraph_index.json"))
    try:
        yield server
    finally:
        server.stop()


def _p50_ms(call: Callable[[int], Any], samples: int) -> float:
    took = []
    for number in range(samples):
        started = time.perf_counter()
        call(number)
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def test_store_latency_with_10000_items(server: Server, make_user, django_db_blocker) -> None:
    user = make_user("bench")
    now = timezone.now()
    StoreItem.objects.bulk_create(
        [
            StoreItem(owner=user, namespace="docs", key=f"k{n:05}", value={"n": n, "tag": f"t{n % 100}", "text": text},
                      vectors=[vector(text)], created_at=now, updated_at=now)
            for n in range(ITEMS)
            for text in [" ".join(VOCABULARY[(n * step) % len(VOCABULARY)] for step in (1, 3, 5))]
        ],
        batch_size=1000,
    )
    client = get_sync_client(url=server.url, api_key=api_key_create(user=user)[1])
    client.store.get_item(["docs"], "k00000")  # the server's first request pays its start-up
    put = _p50_ms(lambda n: client.store.put_item(["docs"], f"new{n}", {"n": n, "tag": "new"}), SAMPLES)
    get = _p50_ms(lambda n: client.store.get_item(["docs"], f"k{n * 37:05}"), SAMPLES)

    def search(n: int) -> None:
        found = client.store.search_items(["docs"], filter={"tag": f"t{n % 100}", "n": {"$gte": 0}}, limit=10)
        assert len(found["items"]) == 10

    searched = _p50_ms(search, SAMPLES // 4)

    def semantic(n: int) -> None:
        found = client.store.search_items(["docs"], query=VOCABULARY[n % len(VOCABULARY)], limit=10)
        assert len(found["items"]) == 10 and found["items"][0]["score"] > 0.5

    ranked = _p50_ms(semantic, 10)
    figure(
        f"store on {connection.vendor}: {ITEMS:,} items, p50 via langgraph-sdk: put {put:.1f} ms, "
        f"get {get:.1f} ms, search with a filter (10 of every 100th item) {searched:.1f} ms, "
        f"semantic search (cosine in Python over all {ITEMS:,}, 9 dims) {ranked:.0f} ms"
    )
    assert put < 1000 and get < 1000 and searched < 5000 and ranked < 30_000
