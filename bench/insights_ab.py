"""The write path with and without the insights projection's trigger: a small local A/B.

A scratch database; C connections write flat out for S seconds per round, with the
run_insights triggers enabled (A) and disabled (B), alternately A B A B:
- create: runs created (the trigger adds their `created` key);
- start: the one-statement status change pending -> running (store/moves.py; the trigger
  adds the queue-time key);
- flip: running <-> waiting (the trigger's WHEN lets these pass: nothing queued);
- finish: running/waiting -> timeout by the general path (app/runs.py; the trigger moves the
  outcome and duration keys and recomputes the pipeline's recoveries around the run).
Statements per second per phase (A B, then B A, ...), and A against B. The lead measures on a quiet machine.

    .venv/bin/python bench/insights_ab.py [--connections 8] [--seconds 5] [--rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

from service.app import runs as app_runs  # noqa: E402
from service.app.context import Actor, OnConnection  # noqa: E402
from service.domain import lifecycle  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import meta, moves, pipelines, runs  # noqa: E402

ENTERPRISE = "ab"
TRIGGERS = ("run_insights_insert_delete", "run_insights_update")


async def _toggle(conn: asyncpg.Connection, on: bool) -> None:
    for name in TRIGGERS:
        await conn.execute(f"ALTER TABLE pipeline_runs {'ENABLE' if on else 'DISABLE'} "
                           f"TRIGGER {name}")


async def finish(conn: asyncpg.Connection, pipeline_id, run_id) -> None:
    """running/waiting -> timeout, the general path (a rated outcome: recoveries move)."""
    await app_runs.change_status(OnConnection(conn), Actor(ENTERPRISE, "bench", None),
                                 pipeline_id, run_id, "timeout")


async def _phase(pool: asyncpg.Pool, pipeline_id, seconds: float, connections: int,
                 kind: str, pools: dict) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        async with pool.acquire() as conn:
            mine = pools.setdefault((kind, n), [])
            while time.perf_counter() < stop:
                if kind == "create":
                    run, _ = await runs.create_run(conn, ENTERPRISE, pipeline_id, "pending",
                                                   "bench", None, lifecycle.RUN_CREATED, {},
                                                   3600, 3600)
                    pools.setdefault(("pending", n), []).append(run["id"])
                    done += 1
                    continue
                source = pools.get(("pending", n)) if kind == "start" else pools.get(("running", n))
                if kind == "finish":
                    if not source:
                        return
                    await finish(conn, pipeline_id, source.pop())
                    done += 1
                    continue
                if not source:
                    return
                run_id = source.pop()
                target = "running" if kind == "start" else None
                if kind == "flip":
                    state = pools.setdefault(("state", n), {})
                    target = "waiting" if state.get(run_id, "running") == "running" else "running"
                    state[run_id] = target
                change = moves.StatusChange(ENTERPRISE, pipeline_id, run_id, target, "bench",
                                            None, {})
                await moves.change_statuses(conn, [change])
                if kind == "start":
                    pools.setdefault(("running", n), []).append(run_id)
                else:
                    source.insert(0, run_id)
                done += 1

    await asyncio.gather(*(worker(n) for n in range(connections)))
    return done


async def main_async(dsn: str, args) -> list[tuple]:
    conn = await asyncpg.connect(dsn)
    await meta.migrate(conn)
    await init_connection(conn)
    pipeline = await pipelines.create_pipeline(conn, ENTERPRISE, 1, {"name": "ab"})
    pool = await asyncpg.create_pool(dsn, min_size=args.connections, max_size=args.connections,
                                     init=init_connection)
    results = []
    try:
        for round_ in range(args.rounds):
            for on in ((True, False) if round_ % 2 == 0 else (False, True)):  # ABBA
                await _toggle(conn, on)
                pools: dict = {}
                for kind in ("create", "start", "flip", "finish"):
                    n = await _phase(pool, pipeline["id"], args.seconds, args.connections, kind,
                                     pools)
                    results.append((round_, "A with" if on else "B without", kind,
                                    n / args.seconds))
        await _toggle(conn, True)
    finally:
        await pool.close()
        await conn.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    name = f"pr_ab_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            results = asyncio.run(main_async(scratchdb.dsn_for(admin, name), args))
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"| round | trigger | phase | statements/s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.0f} |")
    for kind in ("create", "start", "flip", "finish"):
        a = sum(r[3] for r in results if r[2] == kind and r[1].startswith("A"))
        b = sum(r[3] for r in results if r[2] == kind and r[1].startswith("B"))
        print(f"{kind}: with the projection {a / args.rounds:,.0f}/s, without "
              f"{b / args.rounds:,.0f}/s: {100 * (a - b) / b:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
