"""The insights write A/B through HTTP, and the cost of a change reaching back (insights_ab.py).

--http: the service (`python -m service serve`, one process) on a scratch database; E
enterprises with P pipelines each, a token each, their insights watermarks set (as the
sweeper keeps them); C clients drive run lifecycles round the pipelines: create, queued,
processing, running, then complete + success (70%) or failure (20%), or timeout (10%),
for S seconds a phase, with the insights upkeep (A: the service) and without it (B: a
second service process whose write statements leave it out,
bench/service_without_insights.py; with an older checkout's schema, whose upkeep was in
triggers, the triggers disabled) alternately (ABBA per round). Per phase: changes/s (each 2xx POST or PUT is a change), and the CPU
per change of the service process and of the database backends of the scratch database
(user + system, /proc), which other work on the machine moves less than the rates.

--reach-back N: a scratch database seeded with R runs over 90 days (`python -m service
seed`), the service on it; N runs created 78-82 days ago deleted one by one through HTTP
(DELETE run: its keys and recoveries leave every running total from its period on), ms
each (wall, sequential, client included).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402
import scratchdb  # noqa: E402

from service.store import meta, tokens  # noqa: E402

# The insights projection's triggers on pipeline_runs: this schema's, and those of schemas
# before it (an A/B of an older checkout's code toggles the ones its schema has).
TRIGGERS = ("run_insights_row_update", "run_insights_row_insert_delete",
            "run_insights_insert_delete", "run_insights_update", "run_insights_collect_update",
            "run_insights_collect_insert_delete")
TICKS = os.sysconf("SC_CLK_TCK")
MOUNT = "/pipelines/v0"


def _cpu(pids) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


async def _db_pids(admin: asyncpg.Connection, name: str) -> list[int]:
    return [r[0] for r in await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        name)]


async def toggle(conn: asyncpg.Connection, on: bool) -> None:
    """The insights triggers (those the schema has) on or off."""
    names = {r[0] for r in await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'pipeline_runs'::regclass")}
    for name in (n for n in TRIGGERS if n in names):
        await conn.execute(f"ALTER TABLE pipeline_runs {'ENABLE' if on else 'DISABLE'} "
                           f"TRIGGER {name}")


async def _setup(admin: asyncpg.Connection, base: str, enterprises: int,
                 pipelines: int) -> list[tuple[str, list[str]]]:
    """(token, pipeline ids) per enterprise; each enterprise's watermark set."""
    out = []
    async with aiohttp.ClientSession() as http:
        for e in range(enterprises):
            enterprise = f"ab{e}"
            _, token = await tokens.create_token(admin, enterprise, "bench", rate_limit=0)
            ids = []
            for p in range(pipelines):
                async with http.post(f"{base}{MOUNT}/pipelines/",
                                     json={"name": f"p{p}", "stages": [{"name": "build"}]},
                                     headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status in (200, 201), await r.text()
                    ids.append((await r.json())["content"]["id"])
            if await admin.fetchval("SELECT to_regproc('run_insights_close') IS NOT NULL"):
                await admin.fetchval("SELECT run_insights_close($1, now())", enterprise)
            out.append((token, ids))
    return out


def _ends(rng: random.Random) -> list[str]:
    x = rng.random()
    return ["complete", "success"] if x < .7 else ["complete", "failure"] if x < .9 \
        else ["timeout"]


async def _lifecycles(base: str, targets: list, clients: int, seconds: float,
                      seed: int) -> tuple[int, int, float]:
    """(changes, failed requests, seconds): C clients, each a run's lifecycle at a time."""
    done = failed = 0
    stop = time.perf_counter() + seconds
    start = time.perf_counter()

    async def client(k: int, http: aiohttp.ClientSession) -> None:
        nonlocal done, failed
        rng = random.Random(seed * 1000 + k)
        while time.perf_counter() < stop:
            token, ids = targets[rng.randrange(len(targets))]
            pipeline = ids[rng.randrange(len(ids))]
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{base}{MOUNT}/pipelines/{pipeline}/runs/", json={},
                                 headers=auth) as r:
                if r.status not in (200, 201):
                    failed += 1
                    continue
                run = (await r.json())["content"]["id"]
                done += 1
            for status in ["queued", "processing", "running", *_ends(rng)]:
                async with http.put(f"{base}{MOUNT}/pipelines/{pipeline}/runs/{run}/",
                                    json={"status": status}, headers=auth) as r:
                    await r.read()
                    if r.status != 200:
                        failed += 1
                        break
                    done += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return done, failed, time.perf_counter() - start


async def _http_ab(admin_dsn: str, name: str, args) -> list[tuple]:
    """Rounds of A (the service) and B (the same without the insights upkeep), alternated.

    The upkeep is in the write statements (store/append.py INSIGHTS): B is a second service
    process on the same database whose statements leave it out
    (bench/service_without_insights.py); each phase sends its load to one of the two. A
    schema of before that (an older checkout's) kept it in triggers: one process, and B
    with the triggers disabled."""
    dsn = scratchdb.dsn_for(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    await meta.migrate(conn)  # the service migrates again at start: nothing left to do
    in_statements = await conn.fetchval("SELECT to_regproc('run_insights_rest') IS NOT NULL")
    without = [str(Path(__file__).resolve().parent / "service_without_insights.py")]
    results = []
    with contextlib.ExitStack() as stack:
        base, proc = stack.enter_context(scale.service_process(dsn, Path("/tmp")))
        base_b, proc_b = (stack.enter_context(scale.service_process(dsn, Path("/tmp"),
                                                                    entry=without))
                          if in_statements else (base, proc))
        targets = await _setup(conn, base, args.enterprises, args.pipelines)
        for url in {base, base_b}:
            await _lifecycles(url, targets, args.clients, 2, 0)  # warm up (plans, caches)
        for round_ in range(args.rounds):
            for on in ((True, False) if round_ % 2 == 0 else (False, True)):
                await conn.execute("ANALYZE")
                if not in_statements:
                    await toggle(conn, on)
                url, service = (base, proc) if on else (base_b, proc_b)
                pids = await _db_pids(conn, name)
                before = _cpu([service.pid]), _cpu(pids)
                n, failed, took = await _lifecycles(url, targets, args.clients, args.seconds,
                                                    round_ * 2 + on)
                service_cpu = _cpu([service.pid]) - before[0]
                # backends the pool opened meanwhile count whole
                db_cpu = _cpu(set(pids) | set(await _db_pids(conn, name))) - before[1]
                results.append((round_, "A with" if on else "B without", n / took,
                                1e6 * service_cpu / max(n, 1), 1e6 * db_cpu / max(n, 1),
                                failed))
        if not in_statements:
            await toggle(conn, True)
    await conn.close()
    return results


def http_ab(args) -> int:
    results = scratchdb.run_scratch("pr_abh", lambda admin, name: _http_ab(admin, name, args))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.enterprises} enterprises x "
          f"{args.pipelines} pipelines, {args.clients} clients, {args.seconds:g} s a phase")
    print("| round | trigger | changes/s | service CPU µs/change | database CPU µs/change | "
          "failed |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r[0]} | {r[1]} | {r[2]:,.0f} | {r[3]:,.0f} | {r[4]:,.0f} | {r[5]} |")
    a = [r for r in results if r[1].startswith("A")]
    b = [r for r in results if r[1].startswith("B")]

    def mean(rows, i):
        return sum(r[i] for r in rows) / len(rows)

    ra, rb = mean(a, 2), mean(b, 2)
    ca, cb = mean(a, 3) + mean(a, 4), mean(b, 3) + mean(b, 4)
    da, db = mean(a, 4), mean(b, 4)
    print(f"with the projection {ra:,.0f}/s, without {rb:,.0f}/s: {100 * (ra - rb) / rb:+.1f}%; "
          f"service + database CPU {ca:,.0f} against {cb:,.0f} µs/change: "
          f"{100 * (ca - cb) / cb:+.1f}% (database alone {da:,.0f} against {db:,.0f}: "
          f"{100 * (da - db) / db:+.1f}%)")
    print(paired(results))
    print(verdict(results))
    return 0


# Two-sided 95 % quantiles of Student's t by degrees of freedom (beyond: the normal's).
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 25: 2.06, 30: 2.04}


def paired(results: list[tuple]) -> str:
    """The rounds as pairs: each round's A against its own B (the machine drifts between
    rounds more than within one), their mean with a 95 % interval and their median."""
    diffs = _paired_diffs(results)
    if len(diffs) < 2:
        return "paired per round: too few rounds"
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    t = _T95[max(k for k in _T95 if k <= len(diffs) - 1)] if len(diffs) <= 31 else 1.96
    half = t * sd / len(diffs) ** 0.5
    return (f"paired per round ({len(diffs)}): mean {mean:+.1f}% "
            f"(95% interval {mean - half:+.1f}% .. {mean + half:+.1f}%), "
            f"median {statistics.median(diffs):+.1f}%")


def _paired_diffs(results: list[tuple]) -> list[float]:
    """Each round's A against its own B, in %."""
    by_round: dict[int, dict[bool, float]] = {}
    for r in results:
        by_round.setdefault(r[0], {})[r[1].startswith("A")] = r[2]
    return [100 * (p[True] - p[False]) / p[False] for p in by_round.values() if len(p) == 2]


def verdict(results: list[tuple]) -> str:
    """Issue 21's write target read off the paired mean, plainly: a line of its own, after
    `paired`'s (whose form scripts may read)."""
    diffs = _paired_diffs(results)
    if not diffs:
        return "target within 5%: not measured (no round)"
    mean = statistics.fmean(diffs)
    return f"target within 5%: {'met' if mean >= -5.0 else 'missed'} (paired mean {mean:+.1f}%)"


async def _reach_back(admin_dsn: str, name: str, args) -> list[float]:
    dsn = scratchdb.dsn_for(admin_dsn, name)
    scale.seed(dsn, args.history_runs, args.pipelines, 90)
    conn = await asyncpg.connect(dsn)
    enterprise = await conn.fetchval("SELECT enterprise_id FROM pipeline_runs LIMIT 1")
    _, token = await tokens.create_token(conn, enterprise, "bench", rate_limit=0)
    old = await conn.fetch(
        "SELECT pipeline_id, id FROM pipeline_runs WHERE enterprise_id = $1 AND created_at "
        "BETWEEN now() - interval '82 days' AND now() - interval '78 days' "
        "ORDER BY created_at LIMIT $2", enterprise, args.reach_back)
    await conn.execute("ANALYZE")
    await conn.close()
    took = []
    with scale.service_process(dsn, Path("/tmp")) as (base, _):
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token}"}
            for r in old:
                started = time.perf_counter()
                async with http.delete(f"{base}{MOUNT}/pipelines/{r['pipeline_id']}/runs/"
                                       f"{r['id']}/", headers=auth) as resp:
                    await resp.read()
                    assert resp.status in (200, 204), resp.status
                took.append(1000 * (time.perf_counter() - started))
    return took


def reach_back(args) -> int:
    took = scratchdb.run_scratch("pr_abr", lambda admin, name: _reach_back(admin, name, args))
    ordered = sorted(took)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.history_runs:,} runs over 90 days, "
          f"{args.pipelines} pipelines; {len(took)} runs created 78-82 days ago deleted: "
          f"median {statistics.median(took):.1f} ms, mean {statistics.mean(took):.1f} ms, "
          f"max {ordered[-1]:.1f} ms")
    return 0
