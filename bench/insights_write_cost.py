"""The insights upkeep's time per run change in two databases (two schemas), alternated.

One connection writes to each of two existing databases in turn (A B, then B A, ...):
`--changes` creates (`--batch` a transaction), then starts (pending -> running, `--batch`
runs a statement, as group commit makes them), each round under a new enterprise (fresh
running-total rows). Per phase and database: the backend's CPU per change (user + system
from /proc) and the insights triggers' time per change (pg_stat_user_functions, their
total time: run_insights_row, or run_insights_move and run_insights_collect in schemas
before it).
Medians over the rounds. To compare a schema with an older one, migrate one database with
each checkout's `python -m service migrate` (or meta.migrate), then:

    .venv/bin/python bench/insights_write_cost.py --db old_db --db new_db [--changes 300]
        [--batch 1] [--rounds 4] [--pipelines 1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

from service.domain import lifecycle  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import moves, pipelines, runs  # noqa: E402

FUNCTIONS = ["run_insights_move", "run_insights_collect", "run_insights_row"]
TRIGGER_MS = "SELECT coalesce(sum(total_time), 0) FROM pg_stat_user_functions " \
             "WHERE funcname = ANY($1::text[])"


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _trigger_ms(conn: asyncpg.Connection) -> float:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval(TRIGGER_MS, FUNCTIONS)


async def _phase(conn, kind: str, enterprise: str, ps: list, made: list, args) -> None:
    for b in range(args.changes // args.batch):
        if kind == "create":
            async with conn.transaction():
                for i in range(args.batch):
                    p = ps[i % len(ps)]["id"]
                    run, _ = await runs.create_run(conn, enterprise, p, "pending", "bench",
                                                   None, lifecycle.RUN_CREATED, {}, 3600, 3600)
                    made.append((p, run["id"]))
        else:
            await moves.change_statuses(conn, [
                moves.StatusChange(enterprise, p, run_id, "running", "bench", None, {})
                for p, run_id in made[b * args.batch:(b + 1) * args.batch]])


async def _round(dsn: str, enterprise: str, args, results: dict) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await conn.execute("SET track_functions = 'all'")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        ps = [await pipelines.create_pipeline(conn, enterprise, 1, {"name": f"p{i}"})
              for i in range(args.pipelines)]
        made: list = []
        for kind in ("create", "start"):
            ms, cpu = await _trigger_ms(conn), _cpu(pid)
            await _phase(conn, kind, enterprise, ps, made, args)
            cpu, ms = _cpu(pid) - cpu, await _trigger_ms(conn) - ms
            results.setdefault((dsn, kind), []).append(
                (1e6 * cpu / args.changes, 1000 * ms / args.changes))
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", required=True, help="twice: A and B")
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pipelines", type=int, default=1)
    args = parser.parse_args()
    results: dict = {}
    with scratchdb.admin_dsn() as admin:
        dsns = [scratchdb.dsn_for(admin, name) for name in args.db]
        stamp = time.strftime("%H%M%S")
        for r in range(args.rounds):
            for dsn in (dsns if r % 2 == 0 else dsns[::-1]):
                asyncio.run(_round(dsn, f"cost-{stamp}-{r}", args, results))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.changes} changes a phase, batch "
          f"{args.batch}, {args.pipelines} pipeline(s), {args.rounds} rounds (medians)")
    for kind in ("create", "start"):
        for name, dsn in zip(args.db, dsns):
            rows = sorted(results[(dsn, kind)])
            cpu = rows[len(rows) // 2][0]
            ms = sorted(t for _, t in rows)[len(rows) // 2]
            print(f"{kind:6} {name}: backend CPU {cpu:6,.0f} µs/change, insights triggers "
                  f"{ms:6,.0f} µs/change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
