"""The "create" throttle: DRF's scoped throttle, counting per time slice instead of remembering
every request.

DRF's ``SimpleRateThrottle`` keeps the time of every request of the last window in one cache
entry and reads and writes it whole at each request: at the default 6,000/min that entry holds
up to 6,000 floats, decoded and encoded on every create (0.5-2 ms at a hundred runs a second,
growing with the rate). Here the rate's duration is cut into ``SLICES`` slices with one counter
each, incremented atomically (Redis ``INCR``, or the local-memory cache's lock): a constant cost,
and concurrent creates cannot slip past the limit together as they could between DRF's read and
write.

A create is allowed while the requests counted in the slices that overlap the last duration,
the oldest slice in full, stay within the rate. So, like DRF's, it never lets more than the rate
through in any window of the duration; it may refuse a little early, by at most one slice's
worth of time (5 s of a minute).
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.throttling import ScopedRateThrottle

SLICES = 12


class CreateRateThrottle(ScopedRateThrottle):
    """A drop-in for ``ScopedRateThrottle``: same scope attribute, rates setting and cache key."""

    def allow_request(self, request: Any, view: Any) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        num_requests, duration = self.parse_rate(self.rate)
        if num_requests is None or duration is None:  # parse_rate's answer to no rate
            return True
        self.num_requests, self.duration = num_requests, duration
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.now = self.timer()
        self.slice_seconds = duration / SLICES
        current = math.floor(self.now / self.slice_seconds)
        # The SLICES + 1 slices that overlap (now - duration, now], oldest first.
        self.slices = list(range(current - SLICES, current + 1))
        counter = f"{key}:{current}"
        # Counted first, atomically, then judged: two creates cannot both take the last place.
        try:
            count = self.cache.incr(counter)
        except ValueError:  # the slice's first request
            self.cache.add(counter, 0, timeout=duration + 2 * self.slice_seconds + 5)
            count = self.cache.incr(counter)
        earlier = self.cache.get_many([f"{key}:{index}" for index in self.slices[:-1]])
        self.counts = [earlier.get(f"{key}:{index}", 0) for index in self.slices[:-1]] + [count]
        if sum(self.counts) <= num_requests:
            return True
        # Refused requests do not use up the budget (as with DRF's throttle).
        self.counts[-1] = self.cache.decr(counter)
        return False

    def wait(self) -> float:
        """Seconds until the oldest slices holding enough requests have left the window."""
        excess = sum(self.counts) + 1 - self.num_requests
        for index, count in zip(self.slices, self.counts, strict=True):
            excess -= count
            if excess <= 0:
                leaves_at = (index + SLICES + 1) * self.slice_seconds
                return max(leaves_at - self.now, 0.001)
        return self.duration  # more requests than the rate in this slice alone (a lower rate now)
