"""``DjangoStore`` against the ``BaseStore`` contract (no conformance suite ships for stores, so
this is ours): every operation sync and async, batches, filters, namespace listing, TTL, owners,
and concurrent writers."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from langgraph.store.base import GetOp, ListNamespacesOp, MatchCondition, PutOp, SearchOp

from store.backend import DjangoStore
from store.models import StoreItem
from store.services import InvalidStoreInput, store_items_sweep_expired

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(alice) -> DjangoStore:
    return DjangoStore(owner_id=alice.pk)


def test_put_get_update_delete(store: DjangoStore) -> None:
    assert store.get(("a",), "k") is None
    store.put(("a", "b"), "k", {"x": 1})
    item = store.get(("a", "b"), "k")
    assert item is not None
    assert (item.namespace, item.key, item.value) == (("a", "b"), "k", {"x": 1})
    created = item.created_at
    store.put(("a", "b"), "k", {"x": 2})
    again = store.get(("a", "b"), "k")
    assert again is not None and again.value == {"x": 2}
    assert again.created_at == created and again.updated_at >= created
    assert store.get(("a",), "k") is None  # a namespace is exact for get
    store.delete(("a", "b"), "k")
    assert store.get(("a", "b"), "k") is None
    store.delete(("a", "b"), "k")  # deleting twice is harmless


def test_invalid_namespaces_and_keys_are_refused(store: DjangoStore) -> None:
    for namespace in [(), ("a.b",), ("",), ("langgraph", "x")]:
        with pytest.raises(ValueError):
            store.put(namespace, "k", {"x": 1})
    with pytest.raises(InvalidStoreInput):
        store.put(("a",), "", {"x": 1})


def test_batch_runs_in_order(store: DjangoStore) -> None:
    results = store.batch([
        PutOp(("n",), "k", {"v": 1}),
        GetOp(("n",), "k"),
        PutOp(("n",), "k", None),
        GetOp(("n",), "k"),
        SearchOp(("n",)),
        ListNamespacesOp(),
    ])
    assert results[0] is None and results[1].value == {"v": 1}
    assert results[2] is None and results[3] is None and results[4] == [] and results[5] == []


@pytest.mark.django_db(transaction=True)
def test_async_methods(alice) -> None:
    store = DjangoStore(owner_id=alice.pk)

    async def scenario() -> None:
        await store.aput(("users", "1"), "a", {"n": 1})
        await store.aput(("users", "2"), "b", {"n": 2})
        item = await store.aget(("users", "1"), "a")
        assert item is not None and item.value == {"n": 1}
        found = await store.asearch(("users",), filter={"n": {"$gt": 1}})
        assert [i.key for i in found] == ["b"]
        assert await store.alist_namespaces(prefix=("users",)) == [("users", "1"), ("users", "2")]
        await store.adelete(("users", "1"), "a")
        assert await store.aget(("users", "1"), "a") is None

    asyncio.run(scenario())


def _fill(store: DjangoStore) -> None:
    rows = [
        ("alpha", {"n": 1, "tag": "x", "ok": True, "nested": {"a": 1}, "list": [1, 2]}),
        ("beta", {"n": 5, "tag": "y", "ok": False, "nested": {"a": 2}}),
        ("gamma", {"n": 10, "tag": "x", "ok": True}),
        ("delta", {"n": "10", "tag": "z"}),
    ]
    for key, value in rows:
        store.put(("docs",), key, value)


@pytest.mark.parametrize(
    ("filter_", "keys"),
    [
        ({"tag": "x"}, {"alpha", "gamma"}),
        ({"tag": {"$eq": "x"}}, {"alpha", "gamma"}),
        ({"tag": {"$ne": "x"}}, {"beta", "delta"}),
        ({"n": {"$gt": 1}}, {"beta", "gamma"}),
        ({"n": {"$gte": 5}}, {"beta", "gamma"}),
        ({"n": {"$lt": 5}}, {"alpha"}),
        ({"n": {"$lte": 5}}, {"alpha", "beta"}),
        ({"n": {"$gt": 1, "$lt": 10}}, {"beta"}),
        ({"n": "10"}, {"delta"}),  # a string is not the number
        ({"ok": True}, {"alpha", "gamma"}),
        ({"ok": 1}, set()),  # JSON true is not 1
        ({"nested": {"a": 2}}, {"beta"}),
        ({"list": [1, 2]}, {"alpha"}),
        ({"missing": {"$gt": 0}}, set()),
        ({"tag": "x", "n": {"$gt": 1}}, {"gamma"}),
    ],
)
def test_search_filters(store: DjangoStore, filter_: dict, keys: set[str]) -> None:
    _fill(store)
    assert {item.key for item in store.search(("docs",), filter=filter_, limit=100)} == keys


def test_unknown_filter_operator_is_refused(store: DjangoStore) -> None:
    with pytest.raises(InvalidStoreInput, match=r"\$regex"):
        store.search(("docs",), filter={"tag": {"$regex": "x"}})


def test_search_orders_by_update_and_pages(store: DjangoStore) -> None:
    for number in range(25):
        store.put(("p", str(number % 3)), f"k{number:02}", {"n": number})
    store.put(("p", "0"), "k00", {"n": 0})  # updated last: first
    keys = [item.key for item in store.search(("p",), limit=100)]
    assert keys[0] == "k00" and keys[1:] == [f"k{n:02}" for n in range(24, 0, -1)]
    assert [i.key for i in store.search(("p",), limit=5, offset=3)] == keys[3:8]
    # Filtered pages come from the filtered sequence, across more than one read chunk.
    evens = [k for k in keys if int(k[1:]) % 2 == 0]
    page = store.search(("p",), filter={"n": {"$gte": 0}}, limit=4, offset=2)
    assert [i.key for i in page] == keys[2:6]
    assert all(item.score is None for item in page)
    assert len(evens) == 13
    assert [i.key for i in store.search(("p", "1"), limit=100)] == [k for k in keys if int(k[1:]) % 3 == 1]
    assert store.search(("p", "1", "x")) == []
    assert store.search(("pp",)) == []  # a prefix is whole labels, not characters


def test_search_with_a_query_is_refused_without_an_index(store: DjangoStore) -> None:
    with pytest.raises(InvalidStoreInput, match="index"):
        store.search(("docs",), query="tea")


def test_list_namespaces(store: DjangoStore) -> None:
    for namespace in [("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("z", "b", "c"), ("a",)]:
        store.put(namespace, "k", {})
    assert store.list_namespaces() == [("a",), ("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("z", "b", "c")]
    assert store.list_namespaces(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d")]
    assert store.list_namespaces(suffix=("c",)) == [("a", "b", "c"), ("z", "b", "c")]
    assert store.list_namespaces(prefix=("*", "b")) == [("a", "b", "c"), ("a", "b", "d"), ("z", "b", "c")]
    assert store.list_namespaces(prefix=("a",), suffix=("*", "d")) == [("a", "b", "d")]
    assert store.list_namespaces(max_depth=2) == [("a",), ("a", "b"), ("a", "x"), ("z", "b")]
    assert store.list_namespaces(limit=2, offset=1) == [("a", "b", "c"), ("a", "b", "d")]
    result = store.batch([ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("z",)),))])
    assert result == [[("z", "b", "c")]]


def test_owners_do_not_see_each_other(store: DjangoStore, bob) -> None:
    other = DjangoStore(owner_id=bob.pk)
    store.put(("shared",), "k", {"who": "alice"})
    other.put(("shared",), "k", {"who": "bob"})
    assert store.get(("shared",), "k").value == {"who": "alice"}
    assert other.get(("shared",), "k").value == {"who": "bob"}
    other.delete(("shared",), "k")
    assert store.get(("shared",), "k") is not None
    assert other.list_namespaces() == [] and other.search(()) == []


def _age(minutes: float) -> None:
    """Move every TTL item's clock ``minutes`` into the past."""
    for row in StoreItem.objects.exclude(expires_at=None):
        StoreItem.objects.filter(pk=row.pk).update(expires_at=row.expires_at - timedelta(minutes=minutes))


def test_ttl_expiry_refresh_and_sweep(store: DjangoStore) -> None:
    store.put(("t",), "short", {"v": 1}, ttl=1)
    store.put(("t",), "kept", {"v": 2}, ttl=1)
    store.put(("t",), "forever", {"v": 3})
    row = StoreItem.objects.get(key="short")
    assert row.ttl_minutes == 1 and timezone.now() < row.expires_at <= timezone.now() + timedelta(minutes=1)
    _age(0.5)
    # A refreshing read pushes "kept" a full minute ahead again; a non-refreshing one does not.
    assert store.get(("t",), "kept") is not None
    assert store.get(("t",), "short", refresh_ttl=False) is not None
    _age(0.6)
    assert store.get(("t",), "short") is None  # expired: gone for readers before the sweep
    assert {i.key for i in store.search(("t",))} == {"kept", "forever"}
    assert store.list_namespaces() == [("t",)]
    assert store_items_sweep_expired() == 1
    assert set(StoreItem.objects.values_list("key", flat=True)) == {"kept", "forever"}
    # A put over an expired, unswept item starts it afresh.
    _age(5)
    store.put(("t",), "kept", {"v": 4})
    item = store.get(("t",), "kept")
    assert item is not None and item.value == {"v": 4} and StoreItem.objects.get(key="kept").expires_at is None


def test_search_refreshes_ttl_unless_told_not(store: DjangoStore) -> None:
    store.put(("t",), "a", {}, ttl=1)
    _age(0.9)
    store.search(("t",), refresh_ttl=False)
    assert StoreItem.objects.get(key="a").expires_at < timezone.now() + timedelta(seconds=10)
    store.search(("t",))
    assert StoreItem.objects.get(key="a").expires_at > timezone.now() + timedelta(seconds=50)


@pytest.mark.django_db(transaction=True)
def test_concurrent_puts_of_one_key_leave_one_item(alice) -> None:
    """Eight threads, each its own connection, upsert the same key at once: one row, no error."""
    if connection.vendor == "sqlite" and connection.settings_dict["NAME"].startswith(("file:memorydb", ":memory:")):
        pytest.skip("an in-memory SQLite database is not shared between threads")
    barrier = threading.Barrier(8, timeout=30)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            barrier.wait()
            DjangoStore(owner_id=alice.pk).put(("race",), "k", {"n": number})
            DjangoStore(owner_id=alice.pk).put(("race",), f"own{number}", {"n": number})
        except Exception as exc:  # noqa: BLE001  reported by the assert below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert StoreItem.objects.filter(key="k").count() == 1
    assert StoreItem.objects.filter(key__startswith="own").count() == 8
