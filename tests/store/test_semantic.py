"""Semantic search with ``store.index`` configured (a deterministic embedding function): vectors
are stored at put, a ``query`` ranks by cosine similarity, ``index`` on put chooses the fields."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runs.graphs import store_index
from store.backend import DjangoStore
from store.index import InvalidIndexConfig, store_index_from_config
from store.models import StoreItem

pytestmark = pytest.mark.django_db

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "langgraph_index.json"


@pytest.fixture
def indexed(monkeypatch) -> None:
    monkeypatch.setenv("LANGGRAPH_CONFIG", str(CONFIG))


def test_the_index_comes_from_langgraph_json(indexed) -> None:
    index = store_index()
    assert index is not None and index.dims == 9 and index.fields == ("text",)
    assert index.embed_query("tea tea") == [2.0, 0, 0, 0, 0, 0, 0, 0, 0.1]


def test_query_ranks_by_cosine_similarity_through_the_api(indexed, api, bob_api) -> None:
    texts = {"a": "I like tea", "b": "my dog and my cat", "c": "python and rust", "d": "tea and coffee"}
    for key, text in texts.items():
        body = {"namespace": ["notes"], "key": key, "value": {"text": text, "n": len(text)}}
        assert api.put("/store/items", body, format="json").status_code == 204
    found = api.post("/store/items/search", {"namespace_prefix": ["notes"], "query": "tea"}, format="json").json()
    keys = [item["key"] for item in found["items"]]
    assert keys[:2] == ["a", "d"]
    scores = [item["score"] for item in found["items"]]
    assert scores == sorted(scores, reverse=True) and 0.99 < scores[0] <= 1.0
    # A filter and paging apply to the ranked items.
    page = api.post("/store/items/search", {"query": "tea", "filter": {"n": {"$gt": 10}}, "limit": 1}, format="json")
    assert [item["key"] for item in page.json()["items"]] == ["d"]
    # Another user's query ranks only their own items (none).
    assert bob_api.post("/store/items/search", {"query": "tea"}, format="json").json() == {"items": []}


def test_index_on_put_chooses_fields_or_none(indexed, alice) -> None:
    store = DjangoStore(owner_id=alice.pk, index=store_index())
    store.put(("n",), "title", {"text": "rain", "title": "sun"}, index=["title"])
    store.put(("n",), "off", {"text": "sun sun"}, index=False)
    store.put(("n",), "text", {"text": "sun"})
    assert StoreItem.objects.get(key="off").vectors is None
    sun = {item.key: item.score for item in store.search(("n",), query="sun")}
    assert list(sun)[-1] == "off" and sun["off"] is None  # unindexed: last, unscored
    assert sun["title"] > 0.99 and sun["text"] > 0.99
    rain = {item.key: item.score for item in store.search(("n",), query="rain")}
    assert rain["title"] < 0.1  # its text was not indexed, only its title


@pytest.mark.django_db(transaction=True)
def test_async_search_with_a_query(indexed, alice) -> None:
    store = DjangoStore(owner_id=alice.pk, index=store_index())

    async def scenario() -> list[str]:
        await store.aput(("m",), "1", {"text": "coffee please"})
        await store.aput(("m",), "2", {"text": "the cat sleeps"})
        return [item.key for item in await store.asearch(("m",), query="a cat")]

    assert asyncio.run(scenario())[0] == "2"


def test_a_broken_index_configuration_says_what_is_wrong(tmp_path) -> None:
    with pytest.raises(InvalidIndexConfig, match="dims"):
        store_index_from_config({"embed": "./embed.py:embed"}, base_dir=HERE)
    with pytest.raises(InvalidIndexConfig, match="no 'missing'"):
        store_index_from_config({"dims": 9, "embed": "./embed.py:missing"}, base_dir=HERE)
    with pytest.raises(InvalidIndexConfig, match="fields"):
        store_index_from_config({"dims": 9, "embed": "./embed.py:embed", "fields": "text"}, base_dir=HERE)


def test_wrong_dimensions_from_the_embedding_are_refused(alice) -> None:
    index = store_index_from_config({"dims": 3, "embed": "./embed.py:embed"}, base_dir=HERE)
    with pytest.raises(InvalidIndexConfig, match="dimensions"):
        DjangoStore(owner_id=alice.pk, index=index).put(("x",), "k", {"text": "tea"})
