"""The "create" throttle: a counter per user and window, on the shared cache (Redis in the
PostgreSQL + Redis pass, the local-memory cache otherwise)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

from project.throttling import CreateRateThrottle

VIEW = SimpleNamespace(throttle_scope="create")


@pytest.fixture(autouse=True)
def rate(monkeypatch):
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"create": "50/min"})
    yield
    cache.clear()


def request_of(user_id: int) -> SimpleNamespace:
    return SimpleNamespace(user=SimpleNamespace(pk=user_id, is_authenticated=True), META={})


def allowed(user_id: int, at: float | None = None) -> tuple[bool, CreateRateThrottle]:
    throttle = CreateRateThrottle()
    if at is not None:
        throttle.timer = lambda: at
    return throttle.allow_request(request_of(user_id), VIEW), throttle


def test_concurrent_creates_never_pass_the_limit_together():
    # DRF's throttle reads the user's history and writes it back: creates racing between the
    # two all passed. Here 200 creates from 8 threads give exactly the 50 allowed.
    results: list[bool] = []
    lock = threading.Lock()

    def creates() -> None:
        for _ in range(25):
            ok, _ = allowed(1)
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=creates) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 50 and len(results) == 200


def test_the_next_window_starts_afresh_and_retry_after_says_when():
    start = 6000 * 60.0 + 15  # 15 s into a window
    outcomes = [allowed(2, at=start)[0] for _ in range(51)]
    assert outcomes == [True] * 50 + [False]
    refused, throttle = allowed(2, at=start + 30)
    assert not refused and throttle.wait() == pytest.approx(15)
    assert allowed(2, at=start + 45)[0]  # the next minute
    assert allowed(3, at=start)[0]  # every user has a budget of their own
