"""Tokens seen recently: valid ones and unknown ones cached apart, each bounded.

Unknown tokens are cached too (negatively), so repeating one costs no lookup; a flood of
distinct unknown tokens fills only the unknown side (oldest dropped first) and never
evicts a valid token. Lookups of tokens never seen valid share a small gate, so such a
flood holds at most `lookups` pool connections; a known token's refresh skips the gate.
"""
from __future__ import annotations

import asyncio
from typing import Any

MISS = object()


class TokenCache:
    __slots__ = ("seconds", "max_valid", "max_unknown", "gate", "_valid", "_unknown")

    def __init__(self, seconds: float, max_valid: int = 100_000, max_unknown: int = 10_000,
                 lookups: int = 2):
        self.seconds = seconds
        self.max_valid, self.max_unknown = max_valid, max_unknown
        self.gate = asyncio.Semaphore(lookups)
        self._valid: dict[bytes, tuple[Any, float]] = {}  # hash -> (principal, fresh until)
        self._unknown: dict[bytes, float] = {}  # hash -> refused until

    def get(self, key: bytes, now: float) -> Any:
        """The principal, None for a cached unknown token, or MISS."""
        hit = self._valid.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        until = self._unknown.get(key)
        if until is not None and until > now:
            return None
        return MISS

    def known(self, key: bytes) -> bool:
        """Seen valid (perhaps expired since): its lookup need not queue at the gate."""
        return key in self._valid

    def put(self, key: bytes, principal: Any, now: float) -> None:
        until = now + self.seconds
        if principal is None:
            self._valid.pop(key, None)  # revoked
            unknown = self._unknown
            unknown.pop(key, None)
            while len(unknown) >= self.max_unknown:
                del unknown[next(iter(unknown))]  # the oldest
            unknown[key] = until
            return
        self._unknown.pop(key, None)
        if len(self._valid) >= self.max_valid and key not in self._valid:
            self._valid = {k: v for k, v in self._valid.items() if v[1] > now}
            if len(self._valid) >= self.max_valid:
                self._valid.clear()
        self._valid[key] = (principal, until)
