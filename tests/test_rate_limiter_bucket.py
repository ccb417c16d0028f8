"""The token bucket itself, on a clock the test moves: its arithmetic and its header values."""
from __future__ import annotations

import pytest

from service.domain.errors import TooManyRequests
from service.web.limits import NANO, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 5 * NANO

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * NANO)


def test_a_burst_then_refusal_then_refill_at_the_rate():
    clock = Clock()
    limiter = RateLimiter(2, 4, clock=clock)  # 2/s, bursts of 4: a 2 s window
    answers = [limiter.take(1, None) for _ in range(4)]
    assert [a[1] for a in answers] == ['"token";r=3;t=1', '"token";r=2;t=1',
                                       '"token";r=1;t=2', '"token";r=0;t=2']
    assert {a[0] for a in answers} == {'"token";q=4;w=2'} and {a[2] for a in answers} == {0.0}
    with pytest.raises(TooManyRequests) as refused:
        limiter.take(1, None)
    assert refused.value.headers["RateLimit"] == '"token";r=0;t=2'
    assert refused.value.headers["RateLimit-Policy"] == '"token";q=4;w=2'
    assert refused.value.headers["Retry-After"] == "1"
    clock.advance(0.5)  # one request's worth back
    assert limiter.take(1, None)[1] == '"token";r=0;t=2'
    assert limiter.take(2, None)[1] == '"token";r=3;t=1'  # another token: its own bucket


def test_over_the_rate_within_the_delay_waits_for_its_turn():
    clock = Clock()
    limiter = RateLimiter(4, 1, max_delay=0.5, clock=clock)
    assert limiter.take(1, None)[2] == 0.0
    assert limiter.take(1, None)[2] == pytest.approx(0.25)  # its turn in 1/4 s, reserved
    assert limiter.take(1, None)[2] == pytest.approx(0.5)
    with pytest.raises(TooManyRequests):
        limiter.take(1, None)  # 0.75 s away: over the delay


def test_a_tokens_own_rate_and_no_limit():
    clock = Clock()
    limiter = RateLimiter(10, 20, clock=clock)  # 2 s of burst
    assert limiter.take(1, 3)[:2] == ('"token";q=6;w=2', '"token";r=5;t=1')
    assert RateLimiter(0, 1, clock=clock).take(1, None) is None


def test_the_header_string_is_built_again_only_when_its_values_change():
    clock = Clock()
    limiter = RateLimiter(1000, 1000, clock=clock)
    first = limiter.take(1, None)[1]
    clock.advance(0.001)  # refilled what it spent: the same values
    assert limiter.take(1, None)[1] is first
    assert limiter.take(1, None)[1] == '"token";r=998;t=1'
