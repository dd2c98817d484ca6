"""GET /api/v1/executions paged by cursor, and page numbers' bounded count and depth."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.utils import timezone

from executions import pagination
from executions.models import Execution, ExecutionStatus, ExecutionType

pytestmark = pytest.mark.django_db

URL = "/api/v1/executions"


@pytest.fixture
def rows(alice, bob) -> list[str]:
    """25 of alice's executions, newest first (two share a created_at), and some of bob's."""
    now = timezone.now()
    made = []
    for i in range(25):
        status = ExecutionStatus.FAILED if i % 5 == 0 else ExecutionStatus.COMPLETED
        # Rows 10 and 11 were created in the same microsecond: the id decides their order.
        at = now - timedelta(minutes=i if i != 11 else 10)
        made.append(
            Execution(owner=alice, type=ExecutionType.AGENT, target_id="echo", status=status, created_at=at)
        )
    Execution.objects.bulk_create(made)
    Execution.objects.bulk_create(
        Execution(owner=bob, type=ExecutionType.AGENT, target_id="echo", created_at=now) for _ in range(3)
    )
    # bulk_create keeps auto_now_add's value: put the intended times back.
    for execution in made:
        Execution.objects.filter(pk=execution.pk).update(created_at=execution.created_at)
    ordered = sorted(made, key=lambda e: (e.created_at, str(e.pk)), reverse=True)
    return [str(e.pk) for e in ordered]


def cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def ids(body: dict) -> list[str]:
    return [e["execution_id"] for e in body["executions"]]


def walk(api, url: str, link: str) -> tuple[list[str], list[dict]]:
    seen, bodies = [], []
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        bodies.append(body)
        seen += ids(body)
        url = body[link]
        assert len(bodies) < 50
    return seen, bodies


def test_cursor_pages_walk_every_row_once_forwards_and_back(api, rows):
    first = api.get(URL, {"cursor": "", "page_size": 7})
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"next", "previous", "page_size", "executions"}  # no count to compute
    assert body["previous"] is None and ids(body) == rows[:7]

    seen, bodies = walk(api, URL + "?cursor=&page_size=7", "next")
    assert seen == rows  # newest first, none repeated or skipped, the tie included
    assert [len(ids(b)) for b in bodies] == [7, 7, 7, 4]
    assert bodies[-1]["next"] is None

    # From the last page, `previous` links lead back to the first, in the same order.
    back, back_bodies = walk(api, bodies[-1]["previous"], "previous")
    assert [ids(b) for b in back_bodies] == [ids(b) for b in reversed(bodies[:-1])]
    assert back_bodies[-1]["previous"] is None


def test_cursor_pages_oldest_first_and_with_filters(api, rows):
    seen, _ = walk(api, URL + "?cursor=&page_size=4&ordering=created_at", "next")
    assert seen == list(reversed(rows))

    failed = [pk for pk in rows if Execution.objects.get(pk=pk).status == ExecutionStatus.FAILED]
    seen, _ = walk(api, URL + "?cursor=&page_size=2&status=failed", "next")
    assert seen == failed


def test_cursor_links_keep_the_filters_and_page_size(api, rows):
    body = api.get(URL, {"cursor": "", "page_size": 3, "status": "completed"}).json()
    query = parse_qs(urlsplit(body["next"]).query)
    assert query["page_size"] == ["3"] and query["status"] == ["completed"] and query["cursor"][0]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "eyJ0IjogMX0"}, "cursor"),  # base64 JSON without the position
        ({"cursor": cursor_of({"t": "2026-01-01T00:00:00+00:00", "i": "nope", "b": 0})}, "cursor"),
        ({"cursor": cursor_of({"t": "2026-01-01T00:00:00", "i": str(uuid.uuid4()), "b": 0})}, "cursor"),
        ({"cursor": cursor_of([1, 2])}, "cursor"),
        ({"cursor": "", "ordering": "-started_at"}, "ordering"),
        ({"cursor": "", "page": 2}, "page"),
        ({"cursor": "", "page_size": 101}, "page_size"),
    ],
)
def test_cursor_mode_refuses_what_it_cannot_serve(api, rows, params, field):
    response = api.get(URL, params)
    assert response.status_code == 400
    assert field in response.json()["detail"]


def test_page_numbers_count_exactly_when_small(api, rows):
    body = api.get(URL, {"page": 2, "page_size": 10}).json()
    assert body["count"] == 25 and body["count_is_estimate"] is False
    assert ids(body) == rows[10:20]


def test_page_numbers_estimate_the_count_above_the_limit(api, rows, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 10)
    body = api.get(URL, {"page_size": 5}).json()
    assert ids(body) == rows[:5]
    if connection.vendor == "postgresql":
        # The planner's estimate, never below what was counted.
        assert body["count_is_estimate"] is True and body["count"] >= 11
    else:  # SQLite counts a hundred thousand rows in milliseconds: always exact
        assert body["count_is_estimate"] is False and body["count"] == 25


def test_deep_page_numbers_are_a_400_that_points_to_the_cursor(api, rows):
    last_allowed = pagination.MAX_OFFSET // 100 + 1
    assert api.get(URL, {"page": last_allowed, "page_size": 100}).status_code == 200
    response = api.get(URL, {"page": last_allowed + 1, "page_size": 100})
    assert response.status_code == 400
    assert "cursor" in response.json()["detail"]
