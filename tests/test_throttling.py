"""The "create" throttle: counters per user and time slice on the shared cache (Redis in the
PostgreSQL + Redis pass, the local-memory cache otherwise)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

from project.api.throttling import CreateRateThrottle

VIEW = SimpleNamespace(throttle_scope="create")
MINUTE = 6000 * 60.0  # the start of a minute, and of a 5 s slice


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


def test_never_more_than_the_rate_in_a_minute_and_retry_after_says_when():
    assert [create(2, at=MINUTE + 31) for _ in range(30)] == [None] * 30  # slice 30-35 s
    assert [create(2, at=MINUTE + 52) for _ in range(20)] == [None] * 20  # slice 50-55 s
    refused = create(2, at=MINUTE + 58)
    assert refused is not None
    # The 30 of 31 s leave with their slice, a minute after its end: 35 + 60 - 58 = 37 s.
    assert refused.wait() == pytest.approx(37)
    assert create(2, at=MINUTE + 80) is not None  # no budget back at the minute's turn
    assert create(2, at=MINUTE + 94.9) is not None
    # At 95 s the first 30 have left the window; the 20 of 52 s have not.
    outcomes = [create(2, at=MINUTE + 95) for _ in range(31)]
    assert outcomes[:30] == [None] * 30 and outcomes[30] is not None
    assert create(3, at=MINUTE + 58) is None  # every user has a budget of their own


def test_refused_creates_do_not_use_up_the_budget():
    for _ in range(50):
        assert create(4, at=MINUTE + 1) is None
    for _ in range(20):
        assert create(4, at=MINUTE + 2) is not None
    # Once the slice of the 50 has left the window, the budget is whole again.
    assert [create(4, at=MINUTE + 65) for _ in range(50)] == [None] * 50
