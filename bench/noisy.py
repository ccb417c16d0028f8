"""The noisy-neighbour load of `make bench` (bench/run.py --scenarios noisy).

A noisy enterprise keeps 32 connections of status changes busy, holds 20 long-polls (4
tokens x 5, the per-token cap) and floods the service with unknown tokens from 16 more
connections; meanwhile a quiet enterprise, on one connection, reads and changes its runs.
What matters is the quiet tenant's latency (p99) and that all its answers are 200.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from load import OTHER

WRITERS, POLLS, FLOODERS = 32, 20, 16


@dataclass
class NoisyResult:
    quiet_requests: int
    quiet_not_200: int
    quiet_ms: list[float]  # sorted
    noise: dict[str, int]

    def pct(self, q: float) -> float | None:
        values = self.quiet_ms
        return values[min(len(values) - 1, int(q * len(values)))] if values else None


async def _noisy(base: str, noisy: list[tuple[str, str]], poll_tokens: list[str],
                 quiet: list[tuple[str, str]], seconds: float, head: int) -> NoisyResult:
    import aiohttp

    deadline = time.perf_counter() + seconds
    noise = {"writes": 0, "polls": 0, "unknown": 0, "refused": 0}
    quiet_ms: list[float] = []
    quiet_bad = 0

    async def writer(session, k: int) -> None:
        path, token = noisy[k % len(noisy)]
        target = "waiting"
        while time.perf_counter() < deadline:
            async with session.put(base + path, json={"status": target},
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                noise["writes" if resp.status == 200 else "refused"] += 1
            target = OTHER.get(target, "running")

    async def poller(session, token: str) -> None:
        after = head
        while (left := deadline - time.perf_counter()) > 0.1:
            async with session.get(f"{base}/pipelines/v0/events/?after={after}&wait="
                                   f"{min(5.0, left):.1f}",
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                body = await resp.json()
                if resp.status == 200:
                    after = body["content"]["next_after"]
                    noise["polls"] += 1

    async def flooder(session) -> None:
        while time.perf_counter() < deadline:
            bogus = os.urandom(16).hex()
            async with session.get(base + "/pipelines/v0/pipelines/",
                                   headers={"Authorization": f"Bearer {bogus}"}) as resp:
                await resp.read()
                noise["unknown"] += 1

    async def quiet_tenant(session) -> None:
        nonlocal quiet_bad
        await asyncio.sleep(min(1.0, seconds / 4))  # the noise is on
        targets = {path: "waiting" for path, _ in quiet}
        i = 0
        while time.perf_counter() < deadline - 0.5:
            path, token = quiet[i % len(quiet)]
            auth = {"Authorization": f"Bearer {token}"}
            started = time.perf_counter()
            if i % 2:
                request = session.put(base + path, json={"status": targets[path]}, headers=auth)
                targets[path] = OTHER.get(targets[path], "running")
            else:
                request = session.get(base + path, headers=auth)
            async with request as resp:
                await resp.read()
                quiet_bad += resp.status != 200
            quiet_ms.append((time.perf_counter() - started) * 1000)
            i += 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(
            *(writer(session, k) for k in range(WRITERS)),
            *(poller(session, poll_tokens[k % len(poll_tokens)]) for k in range(POLLS)),
            *(flooder(session) for _ in range(FLOODERS)),
            quiet_tenant(session))
    quiet_ms.sort()
    return NoisyResult(len(quiet_ms), quiet_bad, quiet_ms, noise)


def run_noisy(base: str, noisy: list[tuple[str, str]], poll_tokens: list[str],
              quiet: list[tuple[str, str]], *, seconds: float, head: int = 0) -> NoisyResult:
    """noisy / quiet: (run path, token) of each side's runs; poll_tokens: 4 noisy tokens."""
    return asyncio.run(_noisy(base.rstrip("/"), noisy, poll_tokens, quiet, seconds, head))
