"""``DjangoStore``: LangGraph's ``BaseStore`` on the store's Django models, for one owner.

The worker binds one to each graph run (``runs.graphs.graph_get``), so a node with a
``store: BaseStore`` parameter or calling ``langgraph.config.get_store()`` reads and writes the
items the run's owner sees through ``/store/items``. Every operation goes through
``store.services``; the async twin runs the sync batch in one ``sync_to_async`` hop with
``thread_sensitive=True``, as the checkpoint saver does.
"""

from __future__ import annotations

from collections.abc import Iterable

from asgiref.sync import sync_to_async
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)

from store import services
from store.index import StoreIndex


def _item(stored: services.StoredItem) -> Item:
    return Item(
        namespace=stored.namespace, key=stored.key, value=stored.value,
        created_at=stored.created_at, updated_at=stored.updated_at,
    )


def _search_item(stored: services.StoredItem) -> SearchItem:
    return SearchItem(
        namespace=stored.namespace, key=stored.key, value=stored.value,
        created_at=stored.created_at, updated_at=stored.updated_at, score=stored.score,
    )


class DjangoStore(BaseStore):
    """The items of user ``owner_id``. ``ttl`` in minutes; reads refresh TTLs unless told not;
    with ``index`` (the server's ``store.index``), puts embed and a search ``query`` ranks."""

    supports_ttl = True
    ttl_config = TTLConfig(refresh_on_read=True)

    def __init__(self, *, owner_id: int, index: StoreIndex | None = None) -> None:
        self.owner_id = owner_id
        self.index = index

    def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            stored = services.store_item_get(
                owner_id=self.owner_id, namespace=op.namespace, key=op.key, refresh_ttl=op.refresh_ttl
            )
            return None if stored is None else _item(stored)
        if isinstance(op, SearchOp):
            return [
                _search_item(stored)
                for stored in services.store_items_search(
                    owner_id=self.owner_id, namespace_prefix=op.namespace_prefix, filter=op.filter,
                    limit=op.limit, offset=op.offset, query=op.query, refresh_ttl=op.refresh_ttl,
                    index=self.index,
                )
            ]
        if isinstance(op, PutOp):
            if op.value is None:
                services.store_item_delete(owner_id=self.owner_id, namespace=op.namespace, key=op.key)
            else:
                services.store_item_put(
                    owner_id=self.owner_id, namespace=op.namespace, key=op.key, value=dict(op.value),
                    ttl=op.ttl, index_fields=op.index, index=self.index,
                )
            return None
        if isinstance(op, ListNamespacesOp):
            prefix = suffix = None
            for condition in op.match_conditions or ():
                if condition.match_type == "prefix":
                    prefix = condition.path
                elif condition.match_type == "suffix":
                    suffix = condition.path
                else:
                    raise ValueError(f"Unsupported match type: {condition.match_type}")
            return services.store_namespaces_list(
                owner_id=self.owner_id, prefix=prefix, suffix=suffix, max_depth=op.max_depth,
                limit=op.limit, offset=op.offset,
            )
        raise TypeError(f"Unknown store operation: {type(op).__name__}")

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Each operation in order (a put then a get of one key sees the put)."""
        return [self._run(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return await sync_to_async(self.batch, thread_sensitive=True)(ops)

    def __repr__(self) -> str:
        return f"DjangoStore(owner_id={self.owner_id})"

