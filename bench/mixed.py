"""The mixed load of `make bench` (bench/run.py --scenarios mixed): Python (aiohttp) client.

Each connection loops over its share of runs (of every enterprise, each with its own
token) and picks an operation by weight: read a run, change its status (running <->
waiting), move one of its stage runs, create a run. Besides, `polls` long-polls of the
feed (`/events/?wait=5`, one enterprise each) stay open throughout. The reference has
only GET and PUT: its reads are GETs and all its writes PUTs, in the same proportions.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from load import OTHER

WEIGHTS = {"read": 50, "status": 25, "stage": 15, "create": 10}


@dataclass
class Run:
    path: str  # the run's URL path (service) or /runs/{id} (reference)
    next_status: str
    token: str = ""
    pipeline_path: str = ""  # service: .../pipelines/{id}/runs/ (creates)
    stage_paths: list[str] = field(default_factory=list)  # service: its stage runs


@dataclass
class MixedResult:
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    latencies: dict[str, list[float]]  # operation -> ms, sorted
    polls: int  # long-polls answered

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float, op: str | None = None) -> float | None:
        values = (sorted(v for vs in self.latencies.values() for v in vs) if op is None
                  else self.latencies.get(op, []))
        return values[min(len(values) - 1, int(q * len(values)))] if values else None


async def _mixed(base: str, side: str, runs: list[Run], connections: int, seconds: float,
                 polls: int, head: int, seed: int) -> MixedResult:
    import aiohttp

    rng = random.Random(seed)
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    latencies: dict[str, list[float]] = {op: [] for op in ops}
    counts = {"requests": 0, "non_2xx": 0, "errors": 0, "polls": 0}
    deadline = time.perf_counter() + seconds

    def request(session, op: str, run: Run):
        auth = {"Authorization": f"Bearer {run.token}"} if run.token else {}
        if op == "read":
            return session.get(base + run.path, headers=auth)
        if side == "reference" or op == "status":
            target, run.next_status = run.next_status, OTHER.get(run.next_status, "running")
            return session.put(base + run.path, json={"status": target}, headers=auth)
        if op == "stage":  # pending -> running, then running again (a no-op): both 200
            return session.put(base + rng.choice(run.stage_paths), json={"status": "running"},
                               headers=auth)
        return session.post(base + run.pipeline_path, json={}, headers=auth)

    async def worker(session, mine: list[Run]) -> None:
        while time.perf_counter() < deadline:
            op = rng.choices(ops, weights)[0]
            run = rng.choice(mine)
            started = time.perf_counter()
            counts["requests"] += 1
            try:
                async with request(session, op, run) as resp:
                    await resp.read()
                    if not 200 <= resp.status < 300:
                        counts["non_2xx"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["errors"] += 1
            latencies[op].append((time.perf_counter() - started) * 1000)

    async def poller(session, run: Run) -> None:
        auth = {"Authorization": f"Bearer {run.token}"}
        after = head  # only new events matter here
        while (left := deadline - time.perf_counter()) > 0.1:
            wait = min(5.0, left)
            async with session.get(f"{base}/pipelines/v0/events/?after={after}&wait={wait:.1f}",
                                   headers=auth) as resp:
                body = await resp.json()
                if resp.status == 200:
                    after = body["content"]["next_after"]
                    counts["polls"] += 1

    shares = [runs[k::connections] for k in range(connections)]
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections + polls),
                                     timeout=timeout) as session:
        tasks = [worker(session, share) for share in shares if share]
        if side == "service":
            owners = list({run.token: run for run in runs}.values())[:polls]
            tasks += [poller(session, run) for run in owners]
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for values in latencies.values():
        values.sort()
    return MixedResult(counts["requests"], elapsed, counts["non_2xx"], counts["errors"],
                       latencies, counts["polls"])


def run_mixed(base: str, side: str, runs: list[Run], *, connections: int, seconds: float,
              polls: int = 10, head: int = 0, seed: int = 0) -> MixedResult:
    """head: the feed position the long-polls start after (the log's end, from the caller)."""
    return asyncio.run(_mixed(base.rstrip("/"), side, runs, connections, seconds, polls,
                              head, seed))
