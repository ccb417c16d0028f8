"""Per-token limits of one process: a request-rate token bucket and a cap on open waits.

Both are in-process state, deliberately: a shared counter (a row in PostgreSQL) would be a
write on every request, read requests included, and serialize a busy token's requests on
one row. So with `serve --workers N` and R replicas a token may get up to N x R times the
configured rate (docs/rate-limits.md); the operator divides.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from service.domain.errors import TooManyRequests

POLICY = "token"  # the quota policy's name in the RateLimit header fields


NANO = 1_000_000_000  # a token's worth of nanotokens; a second's worth of nanoseconds


class _Bucket:
    """One token's bucket: its level in nanotokens as of `stamp` (monotonic ns), and the
    RateLimit header it last answered with (built again only when its values change)."""

    __slots__ = ("level", "stamp", "remaining", "reset", "header")

    def __init__(self, level: int, stamp: int):
        self.level, self.stamp = level, stamp
        self.remaining = self.reset = -1
        self.header = ""


class RateLimiter:
    """Token buckets keyed by token id: `rate` requests/s sustained, `burst` at once.

    A token's own rate (create-token --rate-limit N) replaces the default rate, with a
    bucket of the same number of seconds' worth (burst / rate; 2 s by default).

    Integer arithmetic (nanotokens and nanoseconds: a bucket refills `rate` nanotokens a
    nanosecond) and strings built once per policy and once per change of the header's
    values: a request costs about a microsecond, not a few.
    """

    __slots__ = ("rate", "burst", "max_delay", "_max_delay_ns", "_seconds", "_buckets",
                 "_policies", "_clock")

    def __init__(self, rate: int, burst: int, max_delay: float = 0.0,
                 clock: Callable[[], int] = time.monotonic_ns):
        self.rate, self.burst, self.max_delay = rate, max(burst, 1), max_delay
        self._max_delay_ns = round(max_delay * NANO)
        self._seconds = self.burst / rate if rate > 0 else 2.0
        self._buckets: dict[int, _Bucket] = {}  # token id -> its bucket
        # own rate (None: the default) -> (rate, burst, full bucket, window, policy header)
        self._policies: dict[int | None, tuple[int, int, int, int, str]] = {}
        self._clock = clock

    def policy(self, own_rate: int | None) -> tuple[int, int]:
        """(rate, burst) for a token; rate 0: not limited."""
        if own_rate is None:
            return self.rate, self.burst
        return own_rate, max(1, round(own_rate * self._seconds))

    def _policy(self, own_rate: int | None) -> tuple[int, int, int, int, str]:
        rate, burst = self.policy(own_rate)
        window = max(1, round(burst / rate)) if rate > 0 else 1
        found = self._policies[own_rate] = (rate, burst, burst * NANO, window,
                                            policy_header(burst, window))
        return found

    def take(self, token_id: int, own_rate: int | None) -> tuple[str, str, float] | None:
        """Spend one request: the RateLimit-Policy and RateLimit header values and how long
        the request must wait first (seconds), or None when the token is not limited.

        Over the limit, a request that would have its turn within max_delay reserves it
        (the bucket goes below zero) and waits for it, as nginx's limit_req queues a burst:
        a client that sends again as soon as it is answered is slowed to the rate instead
        of spinning on 429s. Further over: TooManyRequests (429)."""
        policy = self._policies.get(own_rate) or self._policy(own_rate)
        rate, burst, full, window, policy_text = policy
        if rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(token_id)
        if bucket is None:
            bucket = self._buckets[token_id] = _Bucket(full, now)
        level = bucket.level + (now - bucket.stamp) * rate
        if level > full:
            level = full
        bucket.stamp = now
        unit = rate * NANO  # nanotokens a second
        delay = 0.0
        if level < NANO:  # short of a whole request: its turn comes in (NANO - level) / rate ns
            if NANO - level > self._max_delay_ns * rate:
                bucket.level = level
                raise self._refused(rate, burst, window, level, full, unit)
            delay = (NANO - level) / unit
        bucket.level = level = level - NANO
        remaining = level // NANO if level > 0 else 0
        reset = -((level - full) // unit)  # ceil((full - level) / unit): seconds until full
        if remaining != bucket.remaining or reset != bucket.reset:
            bucket.remaining, bucket.reset = remaining, reset
            bucket.header = f'"{POLICY}";r={remaining};t={reset}'
        return policy_text, bucket.header, delay

    @staticmethod
    def _refused(rate: int, burst: int, window: int, level: int, full: int,
                 unit: int) -> TooManyRequests:
        retry = max(1, -((level - NANO) // unit))  # ceil((NANO - level) / unit)
        refused = TooManyRequests(f"rate limit of this token exceeded ({rate} requests/s, "
                                  f"bursts of {burst}); retry in {retry} s", retry)
        refused.headers.update(rate_headers(burst, window, 0, -((level - full) // unit)))
        return refused


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

