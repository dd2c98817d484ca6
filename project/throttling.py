"""The "create" throttle: DRF's scoped throttle with a counter per user and window.

DRF's ``SimpleRateThrottle`` keeps the time of every request of the last window in one cache
entry and reads and writes it whole at each request: at the default 6,000/min that entry holds
up to 6,000 floats, decoded and encoded on every create (0.5-2 ms at a hundred runs a second,
growing with the rate). Here each user has one integer per window of the rate's duration,
incremented atomically (Redis ``INCR``, or the local-memory cache's lock): constant cost, and
concurrent creates cannot slip past the limit together as they could between DRF's read and
write. The limit holds per window, so a burst at the end of one window and the start of the
next may reach twice the rate; ``Retry-After`` is the time until the window ends.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.throttling import ScopedRateThrottle


class CreateRateThrottle(ScopedRateThrottle):
    """A drop-in for ``ScopedRateThrottle`` (same scope attribute, rates setting and cache key)."""

    def allow_request(self, request: Any, view: Any) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.now = self.timer()
        window = math.floor(self.now / self.duration)
        self.window_ends = (window + 1) * self.duration
        counter = f"{key}:{window}"
        try:
            count = self.cache.incr(counter)
        except ValueError:  # the window's first request
            # Kept a little past the window's end, so a slow request still finds it.
            self.cache.add(counter, 0, timeout=self.duration + 5)
            count = self.cache.incr(counter)
        return count <= self.num_requests

    def wait(self) -> float:
        return max(self.window_ends - self.now, 0.001)
