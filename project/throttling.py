"""The "create" throttle: DRF's scoped throttle, counting per window instead of remembering every
request.

DRF's ``SimpleRateThrottle`` keeps the time of every request of the last window in one cache
entry and reads and writes it whole at each request: at the default 6,000/min that entry holds
up to 6,000 floats, decoded and encoded on every create (0.5-2 ms at a hundred runs a second,
growing with the rate). Here each user has one integer per window of the rate's duration,
incremented atomically (Redis ``INCR``, or the local-memory cache's lock): constant cost, and
concurrent creates cannot slip past the limit together as they could between DRF's read and
write.

The limit is a sliding window estimated from two counters: this window's count plus the last
window's, weighted by the share of it that still lies within one duration of now (the
"sliding window counter" of Cloudflare and others). So the budget does not all come back at a
window's start, and a burst across two windows gets no more than the rate.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.throttling import ScopedRateThrottle


class CreateRateThrottle(ScopedRateThrottle):
    """A drop-in for ``ScopedRateThrottle``: same scope attribute, rates setting and cache key."""

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
        window, self.elapsed = divmod(self.now / self.duration, 1)
        counter = f"{key}:{int(window)}"
        # Counted first, atomically, then judged: two creates cannot both take the last slot.
        try:
            count = self.cache.incr(counter)
        except ValueError:  # the window's first request
            # Kept until the next window has used it as its "last window".
            self.cache.add(counter, 0, timeout=2 * self.duration + 5)
            count = self.cache.incr(counter)
        self.previous = self.cache.get(f"{key}:{int(window) - 1}", 0)
        if self.previous * (1 - self.elapsed) + count <= self.num_requests:
            return True
        # Refused requests do not use up the budget (as with DRF's throttle).
        self.current = self.cache.decr(counter)
        return False

    def wait(self) -> float:
        """Seconds until one more request fits the estimate."""
        limit, previous, current = self.num_requests, self.previous, self.current
        if current + 1 <= limit and previous:
            # Within this window, once enough of the last one has slid out.
            fits_at = 1 - (limit - current - 1) / previous
        else:
            # In the next window, once enough of this one has slid out.
            fits_at = 1 + (1 - (limit - 1) / current if current else 0)
        return max((fits_at - self.elapsed) * self.duration, 0.001)
