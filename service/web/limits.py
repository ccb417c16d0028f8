"""Per-token limits of one process: a request-rate token bucket and a cap on open waits.

Both are in-process state, deliberately: a shared counter (a row in PostgreSQL) would be a
write on every request, read requests included, and serialize a busy token's requests on
one row. So with `serve --workers N` and R replicas a token may get up to N x R times the
configured rate (docs/rate-limits.md); the operator divides.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Iterator

from service.domain.errors import TooManyRequests

POLICY = "token"  # the quota policy's name in the RateLimit header fields


class RateLimiter:
    """Token buckets keyed by token id: `rate` requests/s sustained, `burst` at once.

    A token's own rate (create-token --rate-limit N) replaces the default rate, with a
    bucket of the same number of seconds' worth (burst / rate; 2 s by default).
    """

    __slots__ = ("rate", "burst", "max_delay", "_seconds", "_buckets", "_policies")

    def __init__(self, rate: int, burst: int, max_delay: float = 0.0):
        self.rate, self.burst, self.max_delay = rate, max(burst, 1), max_delay
        self._seconds = self.burst / rate if rate > 0 else 2.0
        self._buckets: dict[int, list[float]] = {}  # token id -> [tokens left, as of]
        self._policies: dict[tuple[int, int], str] = {}

    def policy(self, own_rate: int | None) -> tuple[int, int]:
        """(rate, burst) for a token; rate 0: not limited."""
        if own_rate is None:
            return self.rate, self.burst
        return own_rate, max(1, round(own_rate * self._seconds))

    def take(self, token_id: int, own_rate: int | None) -> tuple[str, str, float] | None:
        """Spend one request: the RateLimit-Policy and RateLimit header values and how long
        the request must wait first (seconds), or None when the token is not limited.

        Over the limit, a request that would have its turn within max_delay reserves it
        (the bucket goes below zero) and waits for it, as nginx's limit_req queues a burst:
        a client that sends again as soon as it is answered is slowed to the rate instead
        of spinning on 429s. Further over: TooManyRequests (429)."""
        rate, burst = self.policy(own_rate)
        if rate <= 0:
            return None
        now = time.monotonic()
        bucket = self._buckets.get(token_id)
        if bucket is None:
            bucket = self._buckets[token_id] = [float(burst), now]
        left = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        window = max(1, round(burst / rate))
        delay = 0.0
        if left < 1.0:
            delay = (1.0 - left) / rate
        if delay > self.max_delay:
            bucket[0] = left
            retry = max(1, math.ceil((1.0 - left) / rate))
            refused = TooManyRequests(f"rate limit of this token exceeded ({rate} requests/s, "
                                      f"bursts of {burst}); retry in {retry} s", retry)
            refused.headers.update(
                rate_headers(burst, window, 0, math.ceil((burst - left) / rate)))
            raise refused
        bucket[0] = left = left - 1.0
        policy = self._policies.get((burst, window))
        if policy is None:  # one string per policy, not one per request
            policy = self._policies[(burst, window)] = policy_header(burst, window)
        return (policy, f'"{POLICY}";r={max(0, int(left))};t={math.ceil((burst - left) / rate)}',
                delay)


def policy_header(quota: int, window: int) -> str:
    return f'"{POLICY}";q={quota};w={window}'


def rate_headers(quota: int, window: int, remaining: int, reset: int) -> dict[str, str]:
    """The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-11)."""
    return {"RateLimit-Policy": policy_header(quota, window),
            "RateLimit": f'"{POLICY}";r={remaining};t={reset}'}


class WaitCap:
    """At most `limit` requests per token that wait (long-polls, streams) open at once.

    Reusable by any waiting endpoint: `with app[WAIT_CAP].hold(principal.token_id): ...`;
    the next one over the cap is a 429 at once. limit 0: no cap.
    """

    __slots__ = ("limit", "_open")

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[int, int] = {}

    def open(self, token_id: int) -> int:
        return self._open.get(token_id, 0)

    @contextlib.contextmanager
    def hold(self, token_id: int) -> Iterator[None]:
        held = self._open.get(token_id, 0)
        if self.limit and held >= self.limit:
            raise TooManyRequests(f"this token already has {held} waiting requests open "
                                  f"(at most {self.limit}); retry when one has answered")
        self._open[token_id] = held + 1
        try:
            yield
        finally:
            left = self._open[token_id] - 1
            if left:
                self._open[token_id] = left
            else:
                del self._open[token_id]

