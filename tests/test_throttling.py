"""The "create" throttle: counters per user and window on the shared cache (Redis in the
PostgreSQL + Redis pass, the local-memory cache otherwise)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

from project.throttling import CreateRateThrottle

VIEW = SimpleNamespace(throttle_scope="create")
MINUTE = 6000 * 60.0  # the start of a window


@pytest.fixture(autouse=True)
def rate(monkeypatch):
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"create": "50/min"})
    yield
    cache.clear()


def create(user_id: int, at: float | None = None) -> CreateRateThrottle | None:
    """None if the create is allowed, else the throttle that refused it."""
    throttle = CreateRateThrottle()
    if at is not None:
        throttle.timer = lambda: at
    request = SimpleNamespace(user=SimpleNamespace(pk=user_id, is_authenticated=True), META={})
    return None if throttle.allow_request(request, VIEW) else throttle


def test_concurrent_creates_never_pass_the_limit_together():
    # DRF's throttle reads the user's history and writes it back: creates racing between the
    # two all passed. Here 200 creates from 8 threads give exactly the 50 allowed.
    results: list[bool] = []
    lock = threading.Lock()

    def creates() -> None:
        for _ in range(25):
            refused = create(1, at=MINUTE + 10)
            with lock:
                results.append(refused is None)

    threads = [threading.Thread(target=creates) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 50 and len(results) == 200


def test_the_budget_slides_back_as_retry_after_says():
    assert [create(2, at=MINUTE + 30) for _ in range(50)] == [None] * 50
    refused = create(2, at=MINUTE + 40)
    assert refused is not None
    # The next window starts with the last one's 50 counted in full, sliding out over a minute:
    # one more fits once 1/50 of it has gone, 21.2 s from now.
    assert refused.wait() == pytest.approx(21.2)
    assert create(2, at=MINUTE + 60.5) is not None  # no new budget at the window's start
    assert create(2, at=MINUTE + 40 + 21.3) is None
    assert create(2, at=MINUTE + 40 + 21.4) is not None  # that one slot, and no more yet
    assert create(3, at=MINUTE + 40) is None  # every user has a budget of their own


def test_refused_creates_do_not_use_up_the_budget():
    for _ in range(50):
        assert create(4, at=MINUTE + 1) is None
    for _ in range(20):
        assert create(4, at=MINUTE + 2) is not None
    # Two minutes on, nothing of that minute is left, refused creates included.
    assert [create(4, at=MINUTE + 120) for _ in range(50)] == [None] * 50
