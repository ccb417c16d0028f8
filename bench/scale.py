"""`make bench`, part 2: the service at scale (issue 6).

1. A scratch database with one enterprise of N runs (default 1,000,000) with full event
   histories, made by `python -m service seed` (COPY), then VACUUM ANALYZE as after any
   bulk load.
2. The service (`python -m service serve`) on its own port. For the enterprise list
   (/v0/runs/) and a pipeline's list, every ordering x single filter (none, a common and a
   rare status, a busy and a quiet pipeline's name), the first page with its count is
   requested R times, one at a time, through HTTP: p50/p95/p99/max, while W writers (8 by
   default, in a process of their own) change runs' statuses through the same service,
   400 changes/s together by default (--write-rate; 0: as fast as answered, which on 2
   cores measures a saturated service's queue, not the lists). Target: p99 <= 25 ms.
   Also: a page 50,000 runs deep by cursor and by offset, and a created_after range.
3. `replay` (events/s, target >= 100,000) and `verify` (seconds) over the whole database.
4. A table on stdout (and, with --out, in a Markdown file).

    .venv/bin/python bench/scale.py [--runs 1000000] [--pipelines 50] [--requests 100]
                                    [--db NAME --keep]   # --db: reuse a seeded database

The database: BENCH_ADMIN_DSN or DATABASE_URL (used to CREATE DATABASE), else PostgreSQL
at 127.0.0.1:5432 as postgres, else an embedded PostgreSQL under .data/bench.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

from service.web.schemas import (  # noqa: E402
    ENTERPRISE_RUN_ORDERINGS, MAX_OFFSET, PIPELINE_RUN_ORDERINGS)
from service.infra.db import init_connection  # noqa: E402
from service.app.replay import replay, verify  # noqa: E402
from service.store import meta  # noqa: E402
from service.store import tokens as token_store  # noqa: E402

ENTERPRISE = "scale"
MOUNT = "/v0"
P99_TARGET_MS = 25.0
OTHER = {"running": "waiting", "waiting": "running"}
REPLAY_TARGET = 100_000


# --- database ----------------------------------------------------------------------------

_dsn_for, _can_connect, admin_dsn, _admin = (
    scratchdb.dsn_for, scratchdb.can_connect, scratchdb.admin_dsn, scratchdb.admin)


async def _has_runs(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('run_counts')") is None:
            return 0
        return await conn.fetchval("SELECT coalesce(sum(n), 0) FROM run_counts "
                                   "WHERE enterprise_id = $1", ENTERPRISE)
    finally:
        await conn.close()


def seed(dsn: str, runs: int, pipelines: int, days: float) -> float:
    """`python -m service seed` into the scratch database; its wall time."""
    started = time.perf_counter()
    env = {**os.environ, **scratchdb.service_env(dsn), "LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "service", "seed", "--enterprise", ENTERPRISE,
           "--pipelines", str(pipelines), "--runs", str(runs), "--days", str(days),
           "--batch", "10000"]
    print(f"seeding {runs:,} runs over {pipelines} pipelines ...", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"seed failed ({proc.returncode}):\n" + "\n".join(lines[-20:]))
    print("\n".join(lines[-2:]), flush=True)
    return time.perf_counter() - started


async def prepare(dsn: str) -> dict:
    """VACUUM ANALYZE after the bulk load; a token; what to filter on."""
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await meta.migrate(conn)
        await conn.execute(
            "VACUUM (ANALYZE) pipeline_runs, run_counts, pipelines, stage_runs, run_insights, "
            "run_recoveries")
        await conn.execute("ANALYZE run_events")
        _, token = await token_store.create_token(conn, ENTERPRISE, f"scale-{uuid.uuid4().hex[:6]}")
        _, writer_token = await token_store.create_token(  # not limited: they write flat out
            conn, ENTERPRISE, f"scale-writer-{uuid.uuid4().hex[:6]}", rate_limit=0)
        by_pipeline = await conn.fetch("""
            SELECT p.id, p.name, sum(c.n) AS n FROM run_counts c
            JOIN pipelines p ON p.enterprise_id = c.enterprise_id AND p.id = c.pipeline_id
            WHERE c.enterprise_id = $1 AND p.deleted_at IS NULL
            GROUP BY p.id, p.name HAVING sum(c.n) > 0 ORDER BY sum(c.n) DESC""", ENTERPRISE)
        by_status = await conn.fetch("""
            SELECT status, sum(n) AS n FROM run_counts WHERE enterprise_id = $1
            GROUP BY status HAVING sum(n) > 0 ORDER BY sum(n) DESC""", ENTERPRISE)
        sizes = await conn.fetch("""
            SELECT relname, pg_total_relation_size(oid) AS bytes FROM pg_class
            WHERE relname IN ('pipeline_runs', 'stage_runs', 'run_counts')""")
        events_bytes = await conn.fetchval("""
            SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits
            WHERE inhparent = 'run_events'::regclass""")
        totals = await conn.fetchrow("""
            SELECT (SELECT count(*) FROM pipeline_runs) AS runs,
                   (SELECT count(*) FROM run_events) AS events,
                   (SELECT count(*) FROM pg_inherits
                    WHERE inhparent = 'run_events'::regclass) AS partitions""")
    finally:
        await conn.close()
    return {
        "token": token, "writer_token": writer_token,
        "busy": by_pipeline[0], "quiet": by_pipeline[len(by_pipeline) // 2],
        "common": by_status[0]["status"], "rare": by_status[-1]["status"],
        "statuses": {r["status"]: r["n"] for r in by_status},
        "sizes": {r["relname"]: r["bytes"] for r in sizes} | {"run_events": events_bytes},
        **dict(totals),
    }


# --- the service -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(dsn: str, workdir: Path, workers: int = 1):
    with service_process(dsn, workdir, workers) as (base, _):
        yield base


@contextmanager
def service_process(dsn: str, workdir: Path, workers: int = 1, log_level: str = "WARNING",
                    entry: list[str] | None = None):
    """service(), yielding (base URL, the Popen) for tools that read its CPU time or its
    access lines (log_level INFO: in workdir/scale-service.log). entry: what runs instead
    of `-m service` (bench/insights_ab.py's B side)."""
    port = free_port()
    env = {**os.environ, **scratchdb.service_env(dsn), "LOG_LEVEL": log_level,
           "TIMEOUT_SWEEP_SECONDS": "3600"}  # no sweeper writes during the measurement
    log = workdir / ("scale-service.log" if entry is None else "scale-service-b.log")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *(entry or ["-m", "service"]), "serve",
                                 "--port", str(port),
                                 "--workers", str(workers)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"service did not start; see {log}")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def measure(base: str, token: str, cases: list[tuple[str, str]], requests: int,
                  warmup: int = 5, tolerate: bool = False) -> list[dict]:
    """Each case's first page, `requests` times one after another: latency percentiles.

    tolerate: a failing case is reported (its status) instead of ending the benchmark."""
    headers = {"Authorization": f"Bearer {token}"}
    out = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for label, path in cases:
            samples, count, failed = [], None, None
            for i in range(warmup + requests):
                started = time.perf_counter()
                async with session.get(base + MOUNT + path) as resp:
                    body = await resp.json()
                elapsed = (time.perf_counter() - started) * 1000
                if resp.status != 200:
                    if not tolerate:
                        raise SystemExit(f"{path}: {resp.status} {body}")
                    failed = f"{resp.status} {body.get('message')}"
                if i >= warmup or failed:  # a failure in the warm-up is reported too
                    samples.append(elapsed)
                if failed:
                    break
                content = body["content"]
                count = content["count"] if "count" in content else len(content["rows"])
            samples.sort()
            out.append({"label": label, "path": path, "count": count, "failed": failed,
                        "p50": statistics.median(samples),
                        "p95": _percentile(samples, 0.95), "p99": _percentile(samples, 0.99),
                        "max": samples[-1]})
    return out


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(0, int(round(q * len(ordered))) - 1)]


# --- writers beside the readers ----------------------------------------------------------

async def _writable_runs(dsn: str, n: int) -> list[tuple[str, str, str]]:
    """Runs whose status can toggle running <-> waiting: (pipeline id, run id, status)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("""
            SELECT r.pipeline_id, r.id, r.status FROM pipeline_runs r
            JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                            AND p.deleted_at IS NULL
            WHERE r.enterprise_id = $1 AND r.status IN ('running', 'waiting') LIMIT $2""",
                                ENTERPRISE, n)
    finally:
        await conn.close()
    return [(str(r["pipeline_id"]), str(r["id"]), r["status"]) for r in rows]


def _write_until(base: str, token: str, runs: list, writers: int, rate: float, stop,
                 counts) -> None:
    """In a process of its own (so the readers' timings see the service, not a client busy
    writing): `writers` connections, each toggling its share of the runs in turn, together
    `rate` changes/s (0: as fast as answered)."""
    interval = writers / rate if rate > 0 else 0.0

    async def writer(k: int) -> None:
        mine = runs[k::writers]
        loop = asyncio.get_running_loop()
        due = loop.time() + interval * k / writers  # spread over the interval
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
            i = 0
            while not stop.is_set():
                if interval:
                    due += interval
                    await asyncio.sleep(max(0.0, due - loop.time()))
                pipeline_id, run_id, status = mine[i % len(mine)]
                target = OTHER[status]
                async with s.put(f"{base}{MOUNT}/pipelines/{pipeline_id}/runs/{run_id}/",
                                 json={"status": target}) as resp:
                    await resp.read()
                    counts[0 if resp.status == 200 else 1] += 1
                    if resp.status != 200 and counts[1] <= 3:
                        print(f"writer: {resp.status} {(await resp.text())[:200]}", flush=True)
                    if resp.status == 200:
                        mine[i % len(mine)] = (pipeline_id, run_id, target)
                i += 1

    async def main() -> None:
        await asyncio.gather(*(writer(k) for k in range(writers)))

    asyncio.run(main())


class Writers:
    """W writers changing statuses while the block runs; .rate and .failed after it."""

    def __init__(self, base: str, token: str, runs: list, writers: int, rate: float,
                 service_workers: int = 1):
        self.writers, self.asked, self.service_workers = writers, rate, service_workers
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.counts = ctx.Event(), ctx.Array("q", 2)
        self.proc = ctx.Process(target=_write_until,
                                args=(base, token, runs, writers, rate, self.stop,
                                      self.counts))
        self.rate = self.failed = 0

    def __enter__(self) -> "Writers":
        if self.writers:
            self.started = time.perf_counter()
            self.proc.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.writers:
            return
        self.stop.set()
        self.proc.join(30)
        seconds = time.perf_counter() - self.started
        self.rate, self.failed = self.counts[0] / seconds, self.counts[1]


def cases(info: dict) -> list[tuple[str, str]]:
    busy, quiet = info["busy"], info["quiet"]
    enterprise_filters = [("-", ""), (f"status={info['common']}", f"status={info['common']}"),
                          (f"status={info['rare']}", f"status={info['rare']}"),
                          (f"name={busy['name']}", f"pipeline_name={quote(busy['name'])}"),
                          (f"name={quiet['name']}", f"pipeline_name={quote(quiet['name'])}")]
    out = []
    for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]:
        for label, query in enterprise_filters:
            q = "&".join(x for x in (query, f"ordering={ordering}" if ordering else "") if x)
            out.append((f"/runs/ {label:<28} {ordering or '(default)'}",
                        "/runs/" + (f"?{q}" if q else "")))
    for ordering in [None, *PIPELINE_RUN_ORDERINGS]:
        for label, query in [("-", ""), (f"status={info['common']}", f"status={info['common']}")]:
            q = "&".join(x for x in (query, f"ordering={ordering}" if ordering else "") if x)
            out.append((f"/pipelines/busy/runs/ {label:<16} {ordering or '(default)'}",
                        f"/pipelines/{busy['id']}/runs/" + (f"?{q}" if q else "")))
    return out


INSIGHTS_TARGET_MS = 50.0


def insight_cases(info: dict) -> list[tuple[str, str]]:
    """Issue 21's two answers: 30 days by day, and 90 days by pipeline (count: rows)."""
    now = datetime.now(timezone.utc)
    def window(days: int) -> str:
        return (f"from={quote((now - timedelta(days=days)).isoformat())}"
                f"&to={quote(now.isoformat())}")
    return [("/insights/runs/ 30 days granularity=day", f"/insights/runs/?{window(30)}&granularity=day"),
            ("/insights/runs/ 90 days group_by=pipeline",
             f"/insights/runs/?{window(90)}&group_by=pipeline")]


def insight_lines(idle: list[dict], busy: list[dict]) -> list[str]:
    lines = ["", f"Insights (target p95 <= {INSIGHTS_TARGET_MS:.0f} ms, idle and with the writers):",
             "", f"| {'answer':<48} | {'rows':>6} | {'idle p95':>8} | {'busy p95':>8} | "
             f"{'busy max':>8} |", f"|{'-' * 50}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 10}|"]
    for a, b in zip(idle, busy):
        ok = max(a["p95"], b["p95"]) <= INSIGHTS_TARGET_MS
        lines.append(f"| {a['label']:<48} | {a['count']:>6} | {a['p95']:>8.1f} | "
                     f"{b['p95']:>8.1f} | {b['max']:>8.1f} | {'met' if ok else 'NOT met'}")
    return lines


async def deep_pages(base: str, token: str, dsn: str, runs: int, requests: int) -> list[dict]:
    """A page deep in the list (50,000 runs, or half): by offset, and by cursor."""
    from service.store import run_lists

    depth = min(50_000, runs // 2)
    conn = await asyncpg.connect(dsn)
    try:  # the cursor of the row just before: what a client paging by cursor would hold
        row = await conn.fetchrow("""
            SELECT r.created_at, r.id FROM pipeline_runs r
            JOIN pipelines p ON p.enterprise_id = r.enterprise_id AND p.id = r.pipeline_id
                            AND p.deleted_at IS NULL
            WHERE r.enterprise_id = $1 ORDER BY r.created_at DESC, r.id DESC
            OFFSET $2 LIMIT 1""", ENTERPRISE, depth - 1)
    finally:
        await conn.close()
    cursor = run_lists.encode_cursor(None, dict(row))
    week = quote((datetime.now(timezone.utc) - timedelta(days=7)).isoformat(), safe="")
    return await measure(base, token, [
        (f"deep page by cursor ({depth:,})", f"/runs/?cursor={cursor}"),
        (f"deep page by offset ({min(depth, MAX_OFFSET):,}"
         f"{': the deepest allowed' if depth >= MAX_OFFSET else ''})",
         f"/runs/?offset={min(depth, MAX_OFFSET)}"),
        ("created_after=7 days ago (count capped at 10,000)", f"/runs/?created_after={week}"),
    ], max(10, requests // 5), warmup=2, tolerate=True)


async def replay_and_verify(dsn: str) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        report = await replay(conn, dsn)  # the dsn: the scan may be split across processes
        started = time.perf_counter()
        scan = await verify(conn, dsn)
        verify_seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"events": report.events, "runs": report.runs, "replay_seconds": report.seconds,
            "rate": report.rate, "repaired": report.repaired + report.counters_repaired,
            "verify_seconds": verify_seconds, "verify_clean": scan.clean}


# --- report ------------------------------------------------------------------------------

def table(info: dict, seeded_seconds: float | None, latencies: list[dict], deep: list[dict],
          rr: dict | None, writers: Writers) -> str:
    lines = [f"Scale benchmark: {info['runs']:,} live runs, {info['events']:,} events "
             f"({info['partitions']} monthly partitions) in enterprise `{ENTERPRISE}`"]
    if seeded_seconds is not None:
        lines.append(f"seeded in {seeded_seconds:,.0f} s")
    lines.append("sizes: " + ", ".join(f"{k} {v / 2**20:,.0f} MiB"
                                        for k, v in sorted(info["sizes"].items())))
    lines += ["", "First page (limit 20) with count, one request at a time, through HTTP, "
              f"while {writers.writers} writers changed statuses through the same service "
              f"({writers.rate:,.0f} changes/s, asked "
              f"{f'{writers.asked:,.0f}/s' if writers.asked else 'as fast as answered'}; "
              f"{writers.failed} not 200):", "",
              f"| {'list / filter / ordering':<64} | {'count':>9} | {'p50 ms':>7} | "
              f"{'p95 ms':>7} | {'p99 ms':>7} | {'max ms':>7} |",
              f"|{'-' * 66}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|"]
    for r in latencies + deep:
        if r.get("failed"):
            lines.append(f"| {r['label']:<64} | {'-':>9} | failed: {r['failed']} "
                         f"after {r['max']:.0f} ms |")
            continue
        lines.append(f"| {r['label']:<64} | {r['count']:>9,} | {r['p50']:>7.1f} | "
                     f"{r['p95']:>7.1f} | {r['p99']:>7.1f} | {r['max']:>7.1f} |")
    worst = max(latencies, key=lambda r: r["p99"])
    ok = worst["p99"] <= P99_TARGET_MS
    lines += ["", f"worst p99 of the first pages: {worst['p99']:.1f} ms ({worst['label'].strip()})"
              f" -- target <= {P99_TARGET_MS:.0f} ms: {'met' if ok else 'NOT met'}"
              f" (service: {writers.service_workers} worker(s))"]
    if rr is None:
        return "\n".join(lines)
    lines += [f"replay: {rr['events']:,} events of {rr['runs']:,} runs in "
              f"{rr['replay_seconds']:.1f} s = {rr['rate']:,.0f} events/s -- target >= "
              f"{REPLAY_TARGET:,}: {'met' if rr['rate'] >= REPLAY_TARGET else 'NOT met'}"
              f" (repaired {rr['repaired']})",
              f"verify: {rr['verify_seconds']:.1f} s, "
              f"{'clean' if rr['verify_clean'] else 'DRIFTS FOUND'}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--days", type=float, default=120.0)
    parser.add_argument("--requests", type=int, default=100, help="per list/filter/ordering")
    parser.add_argument("--db", help="database name (reused if it holds the runs already)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--writers", type=int, default=8,
                        help="connections changing statuses while the lists are read")
    parser.add_argument("--service-workers", type=int, default=1,
                        help="serve --workers N for the list measurement")
    parser.add_argument("--no-replay", dest="replay", action="store_false",
                        help="lists only: skip replay and verify")
    parser.add_argument("--no-insights", dest="insights", action="store_false",
                        help="lists only: skip the insights answers")
    parser.add_argument("--write-rate", type=float, default=400,
                        help="their changes/s together (0: as fast as answered)")
    args = parser.parse_args()
    name = args.db or f"pr_scale_{uuid.uuid4().hex[:8]}"
    workdir = ROOT / ".data"
    workdir.mkdir(exist_ok=True)
    with admin_dsn() as admin:
        dsn = _dsn_for(admin, name)
        if not _can_connect(dsn):
            asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            seeded = None
            have = asyncio.run(_has_runs(dsn))
            if have < args.runs * 0.9:  # deleted runs are not counted
                seeded = seed(dsn, args.runs, args.pipelines, args.days)
            info = asyncio.run(prepare(dsn))
            runs = asyncio.run(_writable_runs(dsn, 100 * args.writers))
            with service(dsn, workdir, args.service_workers) as base:
                insights = insight_cases(info) if args.insights else []
                idle = asyncio.run(measure(base, info["token"], insights, args.requests))
                with Writers(base, info["writer_token"], runs, args.writers, args.write_rate,
                             args.service_workers) as writers:
                    latencies = asyncio.run(measure(base, info["token"], cases(info),
                                                    args.requests))
                    deep = asyncio.run(deep_pages(base, info["token"], dsn, info["runs"],
                                                  args.requests))
                    busy = asyncio.run(measure(base, info["token"], insights,
                                               args.requests))
            rr = asyncio.run(replay_and_verify(dsn)) if args.replay else None
            report = "\n".join([table(info, seeded, latencies, deep, rr, writers),
                                *(insight_lines(idle, busy) if insights else [])])
            print(report)
            if args.out:
                Path(args.out).write_text(report + "\n")
        finally:
            if not args.keep:
                asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
