"""The write path with and without the insights projection's trigger: a small local A/B.

A scratch database; C connections write flat out for S seconds per round, with the
insights upkeep (A) and without it (B), alternately A B A B:
- create: runs created (the upkeep adds their `created` key);
- start: the one-statement status change pending -> running (store/moves.py; the upkeep
  adds the queue-time key);
- flip: running <-> waiting (no key moves: nothing to do);
- finish: running/waiting -> timeout by the general path (app/runs.py; the upkeep moves the
  outcome and duration keys and recomputes the pipeline's recoveries around the run).
The upkeep is in the write statements (store/append.py INSIGHTS): B runs the same
statements made without it (bench/service_without_insights.py statement_pairs); an older
checkout's schema, whose upkeep was in triggers, has them disabled for B.
Changes per second per phase (A B, then B A, ...), and A against B; and, less moved by
other work on the machine, the CPU of the database backends per change (user + system from
/proc, the pool's backends) and the insights functions' own time per change
(pg_stat_user_functions, track_functions = all on the scratch database). `--batch N` makes
each start and flip statement change N runs, as a group commit does (creates and the
general path's finishes stay one a transaction, as the API makes them).
The lead measures on a quiet machine. `--http` measures through the service instead, and
`--reach-back N` the cost of deleting old runs (bench/insights_http.py).

    .venv/bin/python bench/insights_ab.py [--connections 8] [--seconds 5] [--rounds 2]
                                          [--batch 1]
    .venv/bin/python bench/insights_ab.py --http [--enterprises 4] [--pipelines 5]
                                          [--clients 8] [--seconds 5] [--rounds 2]
    .venv/bin/python bench/insights_ab.py --reach-back 40 [--history-runs 20000]
                                          [--pipelines 5]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import os
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402
from insights_http import toggle  # noqa: E402

from service.app import runs as app_runs  # noqa: E402
from service.app.context import Actor, OnConnection  # noqa: E402
from service.domain import lifecycle  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import insights, meta, moves, pipelines, runs  # noqa: E402

ENTERPRISE = "ab"

TICKS = os.sysconf("SC_CLK_TCK")
# The insights functions whose time per change is reported (pg_stat_user_functions).
FUNCTIONS = ("run_insights_row", "run_insights_reach_back", "run_recoveries_check",
             "run_insights_totals_add", "run_recoveries_refresh", "run_recoveries_move")
FUNCTION_TIMES = """
SELECT funcname, sum(self_time) FROM pg_stat_user_functions
WHERE funcname = ANY($1::text[]) GROUP BY 1
"""


def _backend_cpu(pids: list[int]) -> float:
    """Seconds of CPU (user + system) the backends `pids` used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


async def _flush(pool: asyncpg.Pool, connections: int) -> None:
    """Every backend of the pool reports its function times now (else up to 1 s later)."""
    held = [await pool.acquire() for _ in range(connections)]
    for c in held:
        await c.execute("SELECT pg_stat_force_next_flush()")
        await c.execute("SELECT 1")
        await pool.release(c)


async def _function_ms(conn: asyncpg.Connection) -> dict[str, float]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return {r[0]: r[1] for r in await conn.fetch(FUNCTION_TIMES, list(FUNCTIONS))}


async def finish(conn: asyncpg.Connection, pipeline_id, run_id) -> None:
    """running/waiting -> timeout, the general path (a rated outcome: recoveries move)."""
    await app_runs.change_status(OnConnection(conn), Actor(ENTERPRISE, "bench", None),
                                 pipeline_id, run_id, "timeout")


async def _create(conn, pipeline_id, pools: dict, n: int) -> int:
    run, _ = await runs.create_run(conn, ENTERPRISE, pipeline_id, "pending", "bench", None,
                                   lifecycle.RUN_CREATED, {}, 3600, 3600)
    pools.setdefault(("pending", n), []).append(run["id"])
    return 1


async def _step(conn, pipeline_id, kind: str, pools: dict, n: int, batch: int) -> int:
    """One statement (one transaction) of the phase `kind`: how many runs it changed."""
    if kind == "create":  # one a transaction, as the API creates them
        return await _create(conn, pipeline_id, pools, n)
    source = pools.get(("pending", n)) if kind == "start" else pools.get(("running", n))
    if not source:
        return 0
    if kind == "finish":  # the general path: one run a transaction
        await finish(conn, pipeline_id, source.pop())
        return 1
    chosen = [source.pop() for _ in range(min(batch, len(source)))]
    state = pools.setdefault(("state", n), {})
    changes = []
    for run_id in chosen:
        target = "running"
        if kind == "flip":
            target = "waiting" if state.get(run_id, "running") == "running" else "running"
            state[run_id] = target
        changes.append(moves.StatusChange(ENTERPRISE, pipeline_id, run_id, target, "bench",
                                          None, {}))
    await moves.change_statuses(conn, changes)
    if kind == "start":
        pools.setdefault(("running", n), []).extend(chosen)
    else:
        source[:0] = chosen
    return len(chosen)


async def _phase(pool: asyncpg.Pool, pipeline_id, seconds: float, connections: int,
                 kind: str, pools: dict, batch: int = 1) -> tuple[int, float]:
    """Changes made, and the seconds they took (less than `seconds` when the runs to
    change ran out first)."""
    done = 0
    start = time.perf_counter()
    stop = start + seconds

    async def worker(n: int) -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.perf_counter() < stop:
                got = await _step(conn, pipeline_id, kind, pools, n, batch)
                if not got:
                    return
                done += got

    await asyncio.gather(*(worker(n) for n in range(connections)))
    return done, time.perf_counter() - start


async def main_async(dsn: str, args) -> list[tuple]:
    conn = await asyncpg.connect(dsn)
    await meta.migrate(conn)
    await conn.execute(f"ALTER DATABASE {conn._params.database} SET track_functions = 'all'")
    await init_connection(conn)
    pipeline = await pipelines.create_pipeline(conn, ENTERPRISE, 1, {"name": "ab"})
    if await conn.fetchval("SELECT to_regproc('run_insights_close') IS NOT NULL"):
        await insights.close(conn, ENTERPRISE)  # a watermark, as the sweeper keeps it
    # The upkeep is in the write statements (store/append.py INSIGHTS): B runs them without
    # it; an older checkout's schema kept it in triggers, disabled for B.
    pairs = None
    if await conn.fetchval("SELECT to_regproc('run_insights_rest') IS NOT NULL"):
        from service_without_insights import statement_pairs
        pairs = statement_pairs()
    # max_queries: never replaced (asyncpg's default closes a connection after 50,000
    # queries, and its backend's CPU would be lost with it)
    pool = await asyncpg.create_pool(dsn, min_size=args.connections, max_size=args.connections,
                                     init=init_connection, max_queries=10**9)
    held = [await pool.acquire() for _ in range(args.connections)]  # every backend's pid
    pids = [await c.fetchval("SELECT pg_backend_pid()") for c in held]
    for c in held:
        await pool.release(c)
    results = []
    try:
        # Round -1 warms up, unreported: the first ANALYZE sees empty tables, and the plans
        # a connection makes on them (a whole phase's worth) cost up to twice as much.
        for round_ in range(-1, args.rounds):
            for on in ((True, False) if round_ % 2 == 0 else (False, True)):  # ABBA
                # As autovacuum would (it is off on some machines, this one included):
                # without, plans made on the first round's tiny tables (a sequential scan
                # of the runs behind the recoveries' EXISTS) stay cached in every backend,
                # and each round's finish cost more than the last (0.2 -> 9.5 ms).
                await conn.execute("ANALYZE")
                if pairs is None:
                    await toggle(conn, on)
                else:
                    for (module, name), (with_, without) in pairs.items():
                        setattr(module, name, with_ if on else without)
                pools: dict = {}
                for kind in ("create", "start", "flip", "finish"):
                    cpu, fn = _backend_cpu(pids), await _function_ms(conn)
                    n, took = await _phase(pool, pipeline["id"], args.seconds,
                                           args.connections, kind, pools, args.batch)
                    cpu = _backend_cpu(pids) - cpu
                    await _flush(pool, args.connections)
                    fn2 = await _function_ms(conn)
                    per = {k: 1000 * (fn2[k] - fn.get(k, 0)) / max(n, 1) for k in fn2}
                    if round_ >= 0:
                        results.append((round_, "A with" if on else "B without", kind,
                                        n / took, 1e6 * cpu / max(n, 1), per))
        if pairs is None:
            await toggle(conn, True)
        else:
            for (module, name), (with_, _) in pairs.items():
                setattr(module, name, with_)
    finally:
        await pool.close()
        await conn.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1,
                        help="runs changed per start and flip statement")
    parser.add_argument("--http", action="store_true",
                        help="through the service instead (bench/insights_http.py)")
    parser.add_argument("--enterprises", type=int, default=4, help="--http: enterprises")
    parser.add_argument("--pipelines", type=int, default=5,
                        help="--http, --reach-back: pipelines (each enterprise's)")
    parser.add_argument("--clients", type=int, default=8, help="--http: concurrent clients")
    parser.add_argument("--reach-back", type=int, default=0, metavar="N",
                        help="delete N runs created ~80 days ago, ms each (insights_http.py)")
    parser.add_argument("--history-runs", type=int, default=20000,
                        help="--reach-back: runs seeded over 90 days")
    args = parser.parse_args()
    if args.http or args.reach_back:
        import insights_http
        return insights_http.reach_back(args) if args.reach_back else insights_http.http_ab(args)
    name = f"pr_ab_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            results = asyncio.run(main_async(scratchdb.dsn_for(admin, name), args))
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"load average {os.getloadavg()[0]:.2f}, batch {args.batch}")
    print("| round | trigger | phase | changes/s | backend CPU µs/change | functions µs/change |"
          "\n|---|---|---|---|---|---|")
    for r in results:
        fns = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r[5].items()) if v)
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.0f} | {r[4]:,.0f} | {fns} |")
    for kind in ("create", "start", "flip", "finish"):
        a = [r for r in results if r[2] == kind and r[1].startswith("A")]
        b = [r for r in results if r[2] == kind and r[1].startswith("B")]
        ra, rb = sum(r[3] for r in a) / len(a), sum(r[3] for r in b) / len(b)
        ca, cb = sum(r[4] for r in a) / len(a), sum(r[4] for r in b) / len(b)
        print(f"{kind}: with the projection {ra:,.0f}/s, without {rb:,.0f}/s: "
              f"{100 * (ra - rb) / rb:+.1f}%; backend CPU {ca:,.0f} against {cb:,.0f} "
              f"µs/change: {100 * (ca - cb) / cb:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
