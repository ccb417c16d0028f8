"""The noisy-neighbour load of `make bench` (bench/run.py --scenarios noisy).

A noisy enterprise keeps 32 connections of status changes busy, holds 20 long-polls (4
tokens x 5, the per-token cap) and floods the service with unknown tokens from 16 more
connections; meanwhile a quiet enterprise, on one connection, reads and changes its runs.
What matters is the quiet tenant's latency (p99) and that all its answers are 200. The
quiet tenant is timed from a process of its own (the noise's client loop is saturated).
"""
from __future__ import annotations

import asyncio
import multiprocessing
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
                 seconds: float, head: int) -> dict[str, int]:
    import aiohttp

    deadline = time.perf_counter() + seconds
    noise = {"writes": 0, "polls": 0, "unknown": 0, "refused": 0}

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

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(
            *(writer(session, k) for k in range(WRITERS)),
            *(poller(session, poll_tokens[k % len(poll_tokens)]) for k in range(POLLS)),
            *(flooder(session) for _ in range(FLOODERS)))
    return noise


def _quiet_tenant(base: str, quiet: list[tuple[str, str]], seconds: float, out) -> None:
    """In a process of its own, so its timings are the service's and not those of a client
    loop busy with the noise: one connection, GET and PUT in turn, once the noise is on."""
    import aiohttp

    async def main() -> tuple[list[float], int]:
        latencies, bad = [], 0
        await asyncio.sleep(min(1.0, seconds / 4))  # the noise is on
        deadline = time.perf_counter() + seconds - min(1.0, seconds / 4) - 0.5
        targets = {path: "waiting" for path, _ in quiet}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            i = 0
            while time.perf_counter() < deadline:
                path, token = quiet[i % len(quiet)]
                auth = {"Authorization": f"Bearer {token}"}
                started = time.perf_counter()
                if i % 2:
                    request = session.put(base + path, json={"status": targets[path]},
                                          headers=auth)
                    targets[path] = OTHER.get(targets[path], "running")
                else:
                    request = session.get(base + path, headers=auth)
                async with request as resp:
                    await resp.read()
                    bad += resp.status != 200
                latencies.append((time.perf_counter() - started) * 1000)
                i += 1
        return latencies, bad

    out.send(asyncio.run(main()))


def run_noisy(base: str, noisy: list[tuple[str, str]], poll_tokens: list[str],
              quiet: list[tuple[str, str]], *, seconds: float, head: int = 0) -> NoisyResult:
    """noisy / quiet: (run path, token) of each side's runs; poll_tokens: 4 noisy tokens."""
    base = base.rstrip("/")
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    quiet_process = ctx.Process(target=_quiet_tenant, args=(base, quiet, seconds, send))
    quiet_process.start()
    try:
        noise = asyncio.run(_noisy(base, noisy, poll_tokens, seconds, head))
        latencies, bad = receive.recv()
    finally:
        quiet_process.join(30)
    return NoisyResult(len(latencies), bad, sorted(latencies), noise)
