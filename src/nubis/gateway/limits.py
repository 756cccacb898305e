"""What one client may ask of the gateway: a request rate, a body size, a number of connections.

Rate limits are token buckets, one per route and client address (nginx's `limit_req` keyed by
`$binary_remote_addr` in each Nuclio function's ingress): a bucket holds at most `burst` tokens,
gains `rate` a second, and a request takes one; without one it is answered 429 with `Retry-After`,
the whole seconds until a token is there. Gateway-wide today (`--rate-limit`, `--rate-burst`); an
API gateway's own limits will give a route its own `RateLimiter`.

Buckets cannot grow without bound: a bucket left alone for `burst / rate` seconds is full again,
the same as a new one, so it is forgotten. The buckets are kept in the order they were last used,
so the idle ones are at the front and each look drops only those (no scan of the whole map); and
past `max_buckets` (a flood of addresses) the least recently used go first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from nubis.processor.triggers.http_limits import HeadRejected

if TYPE_CHECKING:
    from nubis.gateway.routes import Route

#: most client buckets remembered per limiter (about 100 bytes each)
MAX_BUCKETS = 100_000


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Token buckets keyed by whatever identifies a client of a route."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_buckets = max_buckets
        #: seconds after which an unused bucket is full again, so forgettable
        self.refill_seconds = burst / rate
        self.buckets: dict[Hashable, _Bucket] = {}

    def take(self, key: Hashable) -> float:
        """Take a token for `key`: 0.0 when it had one, else the seconds until it will."""
        now = self.clock()
        buckets = self.buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        buckets[key] = bucket  # last used goes last
        self._evict(now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _evict(self, now: float) -> None:
        buckets = self.buckets
        idle_before = now - self.refill_seconds
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if oldest.stamp > idle_before and len(buckets) <= self.max_buckets:
                return
            del buckets[key]

    def __len__(self) -> int:
        return len(self.buckets)


def retry_after(seconds: float) -> int:
    """`Retry-After` is whole seconds: rounded up, so a client that waits that long finds a token."""
    return max(1, math.ceil(seconds))


class BodyTooLarge(HeadRejected):
    """A request body over --max-body-bytes: 413, the rest of the request is not read or forwarded."""

    def __init__(self, limit: int, route: Route | None = None) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (the gateway's --max-body-bytes)")
        #: the route the request was for, for its metrics (None: not routed yet)
        self.route = route


def rate_limiter(rate: float | None, burst: int | None) -> RateLimiter | None:
    """The limiter of `--rate-limit RATE --rate-burst BURST` (None: no limit); the burst defaults
    to one second's worth of requests."""
    if rate is None:
        return None
    return RateLimiter(rate, burst if burst is not None else max(1, math.ceil(rate)))
