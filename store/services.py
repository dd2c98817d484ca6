"""Every read and write of the store, for the API (``runs``' store views), the graph-side
``BaseStore`` (``store.backend``), the admin and the sweep.

Each function acts for one owner: namespaces are per owner, so a user never reads, lists or
overwrites another user's items. Namespaces arrive as tuples of labels, checked by
``namespace_check``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from store.filters import InvalidFilter, filter_check, value_matches
from store.index import StoreIndex, cosine, item_vectors
from store.models import NAMESPACE_SEPARATOR, StoreItem

# Rows read per query while filtering in Python, so a search of a large namespace streams.
_SEARCH_CHUNK = 500
NAMESPACE_MAX_CHARS = 1024
KEY_MAX_CHARS = 1024


class InvalidStoreInput(ValueError):
    """A namespace, key, ttl, filter or paging value the store refuses (a 422 at the API)."""


class SemanticSearchUnavailable(InvalidStoreInput):
    pass


# Rows scored per query (their value and vectors held in memory at once) in a semantic search.
SEMANTIC_SEARCH_MAX_ROWS = 100_000


@dataclass(frozen=True)
class StoredItem:
    """An item as readers see it (``langgraph.store.base.Item``'s fields, without langgraph)."""

    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    score: float | None = None

    @classmethod
    def from_row(cls, row: StoreItem, score: float | None = None) -> StoredItem:
        return cls(row.namespace_tuple, row.key, row.value, row.created_at, row.updated_at, score)


def namespace_check(namespace: Any, *, allow_empty: bool = True, what: str = "namespace") -> tuple[str, ...]:
    """``namespace`` as a tuple of labels: strings, none empty, none holding a period."""
    if not isinstance(namespace, list | tuple) or not all(isinstance(label, str) for label in namespace):
        raise InvalidStoreInput(f"{what} must be a list of strings")
    if not namespace and not allow_empty:
        raise InvalidStoreInput(f"{what} cannot be empty")
    for label in namespace:
        if not label:
            raise InvalidStoreInput(f"{what} labels cannot be empty strings: {list(namespace)}")
        if NAMESPACE_SEPARATOR in label:
            raise InvalidStoreInput(f"{what} labels cannot contain periods ('.'): {label!r}")
    if namespace and namespace[0] == "langgraph" and not allow_empty:
        raise InvalidStoreInput(f'{what}: the root label "langgraph" is reserved')
    if len(NAMESPACE_SEPARATOR.join(namespace)) > NAMESPACE_MAX_CHARS:
        raise InvalidStoreInput(f"{what} is longer than {NAMESPACE_MAX_CHARS} characters")
    return tuple(namespace)


def _key_check(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidStoreInput("key must be a non-empty string")
    if len(key) > KEY_MAX_CHARS:
        raise InvalidStoreInput(f"key is longer than {KEY_MAX_CHARS} characters")
    return key


def _ttl_check(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidStoreInput("ttl must be a positive number of minutes, or null")
    if ttl > 60 * 24 * 365 * 1000:
        raise InvalidStoreInput("ttl must be at most 1000 years of minutes")
    return float(ttl)


def _index_fields(index_fields: Any) -> list[str] | bool | None:
    if index_fields is None or index_fields is False:
        return index_fields
    if not isinstance(index_fields, list | tuple) or not all(isinstance(path, str) for path in index_fields):
        raise InvalidStoreInput("index must be false, null or a list of field paths")
    return list(index_fields)


def store_item_put(
    *,
    owner_id: int,
    namespace: Any,
    key: Any,
    value: Any,
    ttl: Any = None,
    index_fields: Any = None,
    index: StoreIndex | None = None,
) -> None:
    """Create or replace the item (the upsert keeps ``created_at``); ``ttl`` in minutes. With a
    store ``index``, the value's texts at ``index_fields`` (the index's fields when None; none
    when False) are embedded and kept for semantic search."""
    namespace = namespace_check(namespace, allow_empty=False)
    key = _key_check(key)
    if not isinstance(value, dict):
        raise InvalidStoreInput("value must be an object")
    minutes = _ttl_check(ttl)
    paths = _index_fields(index_fields)
    vectors = None
    if index is not None and paths is not False:
        vectors = item_vectors(index, value, paths if isinstance(paths, list) else None)
    now = timezone.now()
    fields = {
        "value": value,
        "vectors": vectors,
        "updated_at": now,
        "ttl_minutes": minutes,
        "expires_at": None if minutes is None else now + timedelta(minutes=minutes),
    }
    rows = StoreItem.objects.filter(
        owner_id=owner_id, namespace=NAMESPACE_SEPARATOR.join(namespace), key=key
    )
    # An expired item not swept yet is replaced as if absent: a fresh created_at.
    rows.expired().delete()
    if rows.update(**fields):
        return
    try:
        with transaction.atomic():
            StoreItem.objects.create(
                owner_id=owner_id, namespace=NAMESPACE_SEPARATOR.join(namespace), key=key,
                created_at=now, **fields,
            )
    except IntegrityError:
        # A concurrent put created it first: ours is the later write.
        rows.update(**fields)


def store_item_delete(*, owner_id: int, namespace: Any, key: Any) -> None:
    """Delete the item; deleting a missing item is not an error (as on the real server)."""
    namespace = namespace_check(namespace)
    key = _key_check(key)
    StoreItem.objects.in_namespace(namespace).filter(owner_id=owner_id, key=key).delete()


def _refresh(rows: list[StoreItem]) -> None:
    """Push each TTL item's expiry to ``ttl_minutes`` from now (a read that refreshes)."""
    now = timezone.now()
    by_ttl: dict[float, list[int]] = {}
    for row in rows:
        if row.ttl_minutes is not None:
            by_ttl.setdefault(row.ttl_minutes, []).append(row.pk)
    for minutes, pks in by_ttl.items():
        # Only rows still live: one expired since our read stays expired.
        StoreItem.objects.live().filter(pk__in=pks).update(expires_at=now + timedelta(minutes=minutes))


def store_item_get(
    *, owner_id: int, namespace: Any, key: Any, refresh_ttl: bool | None = None
) -> StoredItem | None:
    """The live item, or None; ``refresh_ttl`` (default true) restarts its TTL."""
    namespace = namespace_check(namespace)
    key = _key_check(key)
    row = StoreItem.objects.live().in_namespace(namespace).filter(owner_id=owner_id, key=key).first()
    if row is None:
        return None
    if refresh_ttl is not False:
        _refresh([row])
    return StoredItem.from_row(row)


def _paging(limit: Any, offset: Any, *, maximum: int) -> tuple[int, int]:
    for name, number in (("limit", limit), ("offset", offset)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidStoreInput(f"{name} must be a non-negative integer")
    if limit > maximum:
        raise InvalidStoreInput(f"limit must be at most {maximum}")
    return limit, offset


def store_items_search(
    *,
    owner_id: int,
    namespace_prefix: Any = (),
    filter: Any = None,
    limit: Any = 10,
    offset: Any = 0,
    query: str | None = None,
    refresh_ttl: bool | None = None,
    index: StoreIndex | None = None,
) -> list[StoredItem]:
    """Live items under ``namespace_prefix`` whose value passes ``filter``, latest update
    first. Without a filter, paging is the database's; with one, values are matched here, reading
    the namespace in chunks until the page is full. A ``query`` (with a store ``index``) ranks
    them by cosine similarity instead; items stored without vectors come last, score None."""
    prefix = namespace_check(namespace_prefix or (), what="namespace_prefix")
    try:
        conditions = filter_check(filter)
    except InvalidFilter as exc:
        raise InvalidStoreInput(str(exc)) from None
    limit, offset = _paging(limit, offset, maximum=1000)
    if query is not None and not isinstance(query, str):
        raise InvalidStoreInput("query must be a string or null")
    rows = StoreItem.objects.live().under_prefix(prefix).filter(owner_id=owner_id).order_by("-updated_at", "-pk")
    if query:
        if index is None:
            raise SemanticSearchUnavailable(
                "Semantic search (query) needs a store index: configure store.index "
                "(dims, embed, fields) in langgraph.json"
            )
        ranked = _ranked(rows, conditions, index.embed_query(query))
        page = ranked[offset:offset + limit]
        if refresh_ttl is not False and page:
            _refresh([row for row, _ in page])
        return [StoredItem.from_row(row, score) for row, score in page]
    found: list[StoreItem]
    if not conditions:
        found = list(rows[offset:offset + limit]) if limit else []
    else:
        found = []
        skipped = 0
        start = 0
        while len(found) < limit:
            chunk = list(rows[start:start + _SEARCH_CHUNK])
            for row in chunk:
                if not value_matches(row.value, conditions):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                found.append(row)
                if len(found) == limit:
                    break
            if len(chunk) < _SEARCH_CHUNK:
                break
            start += _SEARCH_CHUNK
    if refresh_ttl is not False and found:
        _refresh(found)
    return [StoredItem.from_row(row) for row in found]


def _ranked(rows: Any, conditions: dict[str, Any], query_vector: list[float]) -> list[tuple[StoreItem, float | None]]:
    scored: list[tuple[StoreItem, float | None]] = []
    for row in rows[:SEMANTIC_SEARCH_MAX_ROWS].iterator(chunk_size=_SEARCH_CHUNK):
        if conditions and not value_matches(row.value, conditions):
            continue
        vectors = row.vectors or []
        # Vectors of another size were made under another index configuration: not comparable.
        score = max(
            (cosine(query_vector, vector) for vector in vectors if len(vector) == len(query_vector)),
            default=None,
        )
        scored.append((row, score))
    # Best first; unscored items after every scored one, newest first among themselves (stable).
    scored.sort(key=lambda pair: (pair[1] is None, -(pair[1] or 0.0)))
    return scored


def _matches(namespace: tuple[str, ...], pattern: tuple[str, ...], *, from_end: bool) -> bool:
    if len(namespace) < len(pattern):
        return False
    labels = namespace[len(namespace) - len(pattern):] if from_end else namespace[: len(pattern)]
    return all(wanted in ("*", label) for label, wanted in zip(labels, pattern, strict=True))


def store_namespaces_list(
    *,
    owner_id: int,
    prefix: Any = None,
    suffix: Any = None,
    max_depth: Any = None,
    limit: Any = 100,
    offset: Any = 0,
) -> list[tuple[str, ...]]:
    """The owner's distinct namespaces (``*`` in ``prefix``/``suffix`` matches any label), each
    cut to ``max_depth`` labels, sorted, then paged."""
    prefix_labels = _pattern_check(prefix, "prefix")
    suffix_labels = _pattern_check(suffix, "suffix")
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
        raise InvalidStoreInput("max_depth must be a positive integer")
    limit, offset = _paging(limit, offset, maximum=10_000)
    rows = StoreItem.objects.live().filter(owner_id=owner_id)
    fixed = prefix_labels[: next((i for i, label in enumerate(prefix_labels) if label == "*"), len(prefix_labels))]
    if fixed:
        rows = rows.under_prefix(fixed)
    found: set[tuple[str, ...]] = set()
    for joined in rows.values_list("namespace", flat=True).distinct().iterator():
        namespace = tuple(joined.split(NAMESPACE_SEPARATOR))
        if prefix_labels and not _matches(namespace, prefix_labels, from_end=False):
            continue
        if suffix_labels and not _matches(namespace, suffix_labels, from_end=True):
            continue
        found.add(namespace[:max_depth] if max_depth is not None else namespace)
    return sorted(found)[offset:offset + limit]


def _pattern_check(pattern: Any, what: str) -> tuple[str, ...]:
    if pattern is None:
        return ()
    if not isinstance(pattern, list | tuple) or not all(isinstance(label, str) for label in pattern):
        raise InvalidStoreInput(f"{what} must be a list of strings")
    return tuple(pattern)


def store_items_sweep_expired() -> int:
    """Delete the items past their TTL (the cluster's sweep calls this); how many went."""
    deleted, _ = StoreItem.objects.expired().delete()
    return deleted
