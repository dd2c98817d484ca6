"""The two ways to page through GET /api/v1/executions.

Cursor (keyset) pagination, ``?cursor=`` (empty for the first page), is the recommended mode: each
page answers ``next`` / ``previous`` links and costs the same however deep it is, since it starts
from the last row seen rather than skipping rows. Page numbers (``?page=``) remain: their
``count`` is exact up to ``EXACT_COUNT_LIMIT`` rows and PostgreSQL's estimate above it
(``count_is_estimate: true``), and pages that start past ``MAX_OFFSET`` rows are a 400 pointing to
the cursor, since an OFFSET reads and throws away every row before it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, QuerySet
from django.utils.functional import cached_property
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.utils.urls import replace_query_param

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# Counting more rows than this costs more than a page; above it the count is PostgreSQL's estimate.
EXACT_COUNT_LIMIT = 10_000
# The deepest row a page number may start at.
MAX_OFFSET = 10_000

CURSOR_ORDERINGS = ("-created_at", "created_at")


class PageParamsSerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, default=1)
    page_size = serializers.IntegerField(min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (attrs["page"] - 1) * attrs["page_size"] > MAX_OFFSET:
            raise ValidationError(
                {
                    "page": [
                        (f"Page numbers reach the first {MAX_OFFSET:,} rows only; use cursor "
                        "pagination to read further: ?cursor= (empty for the first page), then "
                        "follow the `next` links.")
                    ]
                }
            )
        return attrs


def page_params(request: Request) -> tuple[int, int]:
    """``page`` and ``page_size`` from the query string; out of range is a 400, not clamped."""
    params = PageParamsSerializer(data=request.query_params)
    if not params.is_valid():
        raise ValidationError(params.errors)
    return params.validated_data["page"], params.validated_data["page_size"]


def count_bounded(queryset: QuerySet) -> tuple[int, bool]:
    """(count, is_estimate): exact up to ``EXACT_COUNT_LIMIT`` rows, else the planner's estimate
    on PostgreSQL (never below the limit). Other databases count exactly."""
    queryset = queryset.order_by()
    counted = queryset[: EXACT_COUNT_LIMIT + 1].count()
    if counted <= EXACT_COUNT_LIMIT:
        return counted, False
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return queryset.count(), False
    sql, params = queryset.values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return max(int(plan[0]["Plan"]["Plan Rows"]), counted), True


# --- cursors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """A position between two rows: the (created_at, id) of the row next to it, and the side read."""

    created_at: datetime
    id: str
    backwards: bool = False

    def encode(self) -> str:
        raw = json.dumps({"t": self.created_at.isoformat(), "i": self.id, "b": int(self.backwards)})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            at = datetime.fromisoformat(raw["t"])
            if at.tzinfo is None:
                raise ValueError("a cursor's time has its offset")
            return cls(at, str(uuid.UUID(raw["i"])), bool(raw["b"]))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise ValidationError(
                {"cursor": ["Not a cursor of this list: use the `next` or `previous` link as given."]}
            ) from None


def cursor_ordering(request: Request) -> str:
    """The list's ordering in cursor mode: created_at only, newest first by default."""
    ordering = (request.query_params.get("ordering") or "").strip(",") or "-created_at"
    if ordering not in CURSOR_ORDERINGS:
        raise ValidationError(
            {"ordering": [("Cursor pagination orders by created_at or -created_at only; "
                          "other orderings page by ?page=.")]}
        )
    return ordering


def cursor_page(
    request: Request, queryset: QuerySet, *, ordering: str, page_size: int
) -> tuple[list[Any], str | None, str | None]:
    """One page of ``queryset`` from the request's ``cursor``: (rows, next URL, previous URL).

    The position becomes a range condition on (created_at, id) that an index starting with the
    filters' columns and ending with (created_at, id) answers without reading skipped rows.
    """
    text = request.query_params.get("cursor") or ""
    cursor = Cursor.decode(text) if text else None
    descending = ordering.startswith("-")
    backwards = bool(cursor and cursor.backwards)
    # Reading backwards (a `previous` link) walks the other way and flips the page afterwards.
    older = descending != backwards
    if cursor is not None:
        at, pk = cursor.created_at, cursor.id
        # The redundant created_at bound is what PostgreSQL starts the index scan from; the
        # OR alone would be a filter over every row before the position.
        if older:
            queryset = queryset.filter(
                Q(created_at__lt=at) | Q(created_at=at, id__lt=pk), created_at__lte=at
            )
        else:
            queryset = queryset.filter(
                Q(created_at__gt=at) | Q(created_at=at, id__gt=pk), created_at__gte=at
            )
    queryset = queryset.order_by("-created_at", "-id") if older else queryset.order_by("created_at", "id")
    rows = list(queryset[: page_size + 1])
    more = len(rows) > page_size
    rows = rows[:page_size]
    if backwards:
        rows.reverse()
    has_next = more if not backwards else True
    has_previous = (cursor is not None) if not backwards else more
    url = request.build_absolute_uri()
    next_url = previous_url = None
    if rows and has_next:
        last = rows[-1]
        next_url = replace_query_param(url, "cursor", Cursor(last.created_at, str(last.id)).encode())
    if rows and has_previous:
        first = rows[0]
        previous_url = replace_query_param(
            url, "cursor", Cursor(first.created_at, str(first.id), backwards=True).encode()
        )
    elif has_previous and cursor is not None:
        previous_url = replace_query_param(url, "cursor", "")
    return rows, next_url, previous_url



class EstimatedCountPaginator(Paginator):
    """The admin changelists' paginator: ``count_bounded`` rather than COUNT(*) of a million rows
    (the page links past the estimate simply come back empty)."""

    @cached_property
    def count(self) -> int:
        # The admin hands its changelist queryset; the stubs type object_list as any sequence.
        return count_bounded(cast(QuerySet, self.object_list))[0]
