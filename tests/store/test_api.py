"""The store API through Django's test client: shapes of the real server, owner isolation, clear
422s for bad input, and the staff store browser."""

from __future__ import annotations

import pytest

from store.models import StoreItem

pytestmark = pytest.mark.django_db

ITEM_KEYS = {"namespace", "key", "value", "created_at", "updated_at"}


def _put(api, namespace: list[str], key: str, value: dict, **extra) -> None:
    response = api.put("/store/items", {"namespace": namespace, "key": key, "value": value, **extra}, format="json")
    assert response.status_code == 204, response.content


def test_put_get_search_namespaces_delete(api) -> None:
    _put(api, ["users", "1"], "prefs", {"theme": "dark", "size": 3})
    _put(api, ["users", "2"], "prefs", {"theme": "light", "size": 5})
    response = api.get("/store/items", {"namespace": "users.1", "key": "prefs"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == ITEM_KEYS and body["namespace"] == ["users", "1"] and body["value"]["theme"] == "dark"

    search = {"namespace_prefix": ["users"], "filter": {"size": {"$gt": 3}}}
    found = api.post("/store/items/search", search, format="json").json()
    assert [(i["namespace"], i["score"]) for i in found["items"]] == [(["users", "2"], None)]
    assert set(found["items"][0]) == ITEM_KEYS | {"score"}

    listed = api.post("/store/namespaces", {"prefix": ["users"], "max_depth": 1}, format="json").json()
    assert listed == {"namespaces": [["users"]]}
    assert api.post("/store/namespaces", {}, format="json").json() == {"namespaces": [["users", "1"], ["users", "2"]]}

    assert api.delete("/store/items", {"namespace": ["users", "1"], "key": "prefs"}, format="json").status_code == 204
    missing = api.get("/store/items", {"namespace": "users.1", "key": "prefs"})
    assert missing.status_code == 200 and missing.json() is None


def test_namespace_as_repeated_query_parameter(api) -> None:
    _put(api, ["a", "b"], "k", {"v": 1})
    assert api.get("/store/items?namespace=a&namespace=b&key=k").json()["value"] == {"v": 1}


def test_another_user_sees_nothing(api, bob_api) -> None:
    _put(api, ["private"], "secret", {"v": 1})
    assert bob_api.get("/store/items", {"namespace": "private", "key": "secret"}).json() is None
    assert bob_api.post("/store/items/search", {}, format="json").json() == {"items": []}
    assert bob_api.post("/store/namespaces", {}, format="json").json() == {"namespaces": []}
    # Bob's delete or put of the same namespace and key touches only his own item.
    assert bob_api.delete("/store/items", {"namespace": ["private"], "key": "secret"}, format="json").status_code == 204
    _put(bob_api, ["private"], "secret", {"v": "bob"})
    assert api.get("/store/items", {"namespace": "private", "key": "secret"}).json()["value"] == {"v": 1}


def test_ttl_is_minutes(api) -> None:
    _put(api, ["t"], "k", {"v": 1}, ttl=2.5)
    row = StoreItem.objects.get()
    assert row.ttl_minutes == 2.5
    assert 149 <= (row.expires_at - row.updated_at).total_seconds() <= 151
    assert api.get("/store/items", {"namespace": "t", "key": "k", "refresh_ttl": "false"}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("put", "/store/items", {"namespace": ["a"], "key": "k"}, "value"),
        ("put", "/store/items", {"namespace": ["a"], "key": "k", "value": [1]}, "value must be an object"),
        ("put", "/store/items", {"namespace": ["a.b"], "key": "k", "value": {}}, "periods"),
        ("put", "/store/items", {"namespace": [], "key": "k", "value": {}}, "empty"),
        ("put", "/store/items", {"namespace": [1], "key": "k", "value": {}}, "list of strings"),
        ("put", "/store/items", {"namespace": ["a"], "key": "k", "value": {}, "ttl": -1}, "ttl"),
        ("put", "/store/items", {"namespace": ["a"], "key": "k", "value": {}, "ttl": "soon"}, "ttl"),
        ("put", "/store/items", {"namespace": ["a"], "key": "k", "value": {}, "index": "x"}, "index"),
        ("put", "/store/items", ["not", "an", "object"], "object"),
        ("delete", "/store/items", {"namespace": ["a"]}, "key"),
        ("post", "/store/items/search", {"filter": {"n": {"$regex": "x"}}}, "$regex"),
        ("post", "/store/items/search", {"filter": "n"}, "filter"),
        ("post", "/store/items/search", {"limit": -1}, "limit"),
        ("post", "/store/items/search", {"limit": "ten"}, "limit"),
        ("post", "/store/items/search", {"refresh_ttl": "yes"}, "refresh_ttl"),
        ("post", "/store/items/search", {"query": "what does the user like?"}, "index"),
        ("post", "/store/namespaces", {"max_depth": 0}, "max_depth"),
        ("post", "/store/namespaces", {"prefix": "a"}, "prefix"),
    ],
)
def test_bad_input_is_a_422_naming_the_problem(api, method: str, path: str, body, words: str) -> None:
    response = getattr(api, method)(path, body, format="json")
    assert response.status_code == 422, response.content
    assert words in response.json()["detail"]


def test_get_without_key_and_bad_refresh_ttl(api) -> None:
    assert "key" in api.get("/store/items", {"namespace": "a"}).json()["detail"]
    response = api.get("/store/items", {"namespace": "a", "key": "k", "refresh_ttl": "maybe"})
    assert response.status_code == 422 and "refresh_ttl" in response.json()["detail"]


def test_anonymous_is_refused(client) -> None:
    assert client.post("/store/items/search", {}, content_type="application/json").status_code == 401


def test_store_browser_shows_every_users_items_to_staff(
    api, bob_api, make_user, client, django_assert_max_num_queries
) -> None:
    _put(api, ["memories", "alice"], "fact", {"likes": "tea"})
    _put(bob_api, ["memories", "bob"], "fact", {"likes": "coffee"})
    _put(bob_api, ["notes"], "n1", {"text": "hi"})
    staff = make_user("staffer", staff=True)
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    with django_assert_max_num_queries(12):
        page = client.get("/admin/store/storeitem/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "tea" in text and "coffee" in text
    filtered = client.get("/admin/store/storeitem/", {"namespace_root": "notes"}).content.decode()
    assert "hi" in filtered and "coffee" not in filtered
    searched = client.get("/admin/store/storeitem/", {"q": "memories.bob"}).content.decode()
    assert "coffee" in searched and "tea" not in searched
    item = StoreItem.objects.get(key="fact", owner__username="alice")
    detail = client.get(f"/admin/store/storeitem/{item.pk}/change/").content.decode()
    assert "&quot;likes&quot;: &quot;tea&quot;" in detail
