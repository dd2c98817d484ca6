"""``/store/items``, ``/store/items/search`` and ``/store/namespaces``: the LangGraph store API
over ``store.services``, for the requesting user's items only.

Shapes as the real server answers them (../shared/langgraph-behaviour.md §2.9): a put or delete
is a 204, a missing item is a 200 with ``null``, search items carry ``score: null``, and the
namespaces come as ``{"namespaces": [...]}``.
"""

from __future__ import annotations

from typing import Any, cast

from django.http import HttpResponse
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from project.booleans import FALSE_WORDS, TRUE_WORDS
from runs.errors import Unprocessable
from runs.graphs import store_index
from runs.serializers import iso
from runs.views import LangGraphViewSet
from store import services


def _item_json(item: services.StoredItem) -> dict[str, Any]:
    return {
        "namespace": list(item.namespace),
        "key": item.key,
        "value": item.value,
        "created_at": iso(item.created_at),
        "updated_at": iso(item.updated_at),
    }


def _query_namespace(request: Request) -> list[str]:
    # langgraph-sdk sends the labels joined with "." (labels cannot hold one); a client following
    # the spec's array parameter repeats it.
    values = request.query_params.getlist("namespace")
    if len(values) > 1:
        return values
    joined = values[0] if values else ""
    return joined.split(".") if joined else []


def _query_refresh_ttl(request: Request) -> bool | None:
    value = request.query_params.get("refresh_ttl")
    if value is None or value == "":
        return None
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise Unprocessable("Invalid refresh_ttl: must be a boolean")


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise Unprocessable(f"Invalid {name}: must be a boolean or null")
    return value


class StoreViewSet(LangGraphViewSet):
    def _owner_id(self) -> int:
        # Only authenticated users get past the API's permission: a saved user, with a pk.
        return cast(int, self.request.user.pk)

    def _object_body(self) -> dict[str, Any]:
        body = self.body()
        if not isinstance(body, dict):
            raise Unprocessable("The request body must be a JSON object")
        return body

    @action(detail=False, methods=["put", "get", "delete"], url_path="items")
    def items(self, request: Request) -> HttpResponse:
        try:
            return self._items(request)
        except services.InvalidStoreInput as exc:
            raise Unprocessable(str(exc)) from None

    def _items(self, request: Request) -> HttpResponse:
        owner_id = self._owner_id()
        if request.method == "GET":
            key = request.query_params.get("key")
            if not key:
                raise Unprocessable("Missing query parameter: key")
            item = services.store_item_get(
                owner_id=owner_id, namespace=_query_namespace(request), key=key,
                refresh_ttl=_query_refresh_ttl(request),
            )
            if item is None:
                # DRF renders None as an empty body; the real server's is JSON null.
                return HttpResponse(b"null", content_type="application/json")
            return Response(_item_json(item))
        body = self._object_body()
        for field in ("key", "value") if request.method == "PUT" else ("key",):
            if field not in body:
                raise Unprocessable(f"Missing field: {field}")
        if request.method == "PUT":
            services.store_item_put(
                owner_id=owner_id, namespace=body.get("namespace", []), key=body["key"],
                value=body["value"], ttl=body.get("ttl"), index_fields=body.get("index"),
                index=store_index(),
            )
        else:
            services.store_item_delete(owner_id=owner_id, namespace=body.get("namespace") or [], key=body["key"])
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=False, methods=["post"], url_path="items/search")
    def search(self, request: Request) -> Response:
        body = self._object_body()
        try:
            found = services.store_items_search(
                owner_id=self._owner_id(),
                namespace_prefix=body.get("namespace_prefix") or [],
                filter=body.get("filter"),
                limit=body.get("limit", 10),
                offset=body.get("offset", 0),
                query=body.get("query"),
                refresh_ttl=_optional_bool(body, "refresh_ttl"),
                index=store_index(),
            )
        except services.InvalidStoreInput as exc:
            raise Unprocessable(str(exc)) from None
        return Response({"items": [{**_item_json(item), "score": item.score} for item in found]})

    @action(detail=False, methods=["post"], url_path="namespaces")
    def namespaces(self, request: Request) -> Response:
        body = self._object_body()
        try:
            found = services.store_namespaces_list(
                owner_id=self._owner_id(),
                prefix=body.get("prefix"),
                suffix=body.get("suffix"),
                max_depth=body.get("max_depth"),
                limit=body.get("limit", 100),
                offset=body.get("offset", 0),
            )
        except services.InvalidStoreInput as exc:
            raise Unprocessable(str(exc)) from None
        return Response({"namespaces": [list(namespace) for namespace in found]})
