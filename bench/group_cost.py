"""The database CPU of a group commit's statement, by group size: a local A/B helper.

A scratch database with R runs of one enterprise; one connection sends the group commit's
statement (store/moves.py, as app/runs.grouped does) with groups of k changes flipping
running <-> waiting, N statements per size, and reads its backend's CPU from /proc
(utime + stime: waiting for a busy core is not counted). Prints µs of database CPU per
statement and per change, and the wall time. Variants alternate in one run, each on a
connection of its own: the default, `--setting S` (a SET on the connection first, e.g.
plan_cache_mode = force_generic_plan) and `--around S` (that SET before each statement
and asyncpg's reset query after it: what a pooled connection's setting costs). Compare
code versions by running the script of each checkout alternately.

    .venv/bin/python bench/group_cost.py [--runs 1500] [--sizes 1,2,4,8,16,32] [--statements 300]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402
from chain_ab import _cpu  # noqa: E402

from service.domain import lifecycle  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import meta, moves, pipelines, runs  # noqa: E402

ENTERPRISE = "group-cost"


async def _seed(conn: asyncpg.Connection, n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    pipeline = await pipelines.create_pipeline(conn, ENTERPRISE, 1, {"name": "g"})
    run_ids = []
    for _ in range(n):
        run, _ = await runs.create_run(conn, ENTERPRISE, pipeline["id"], "pending", "bench",
                                       None, lifecycle.RUN_CREATED, {}, 3600, 3600)
        run_ids.append(run["id"])
    await moves.change_statuses(conn, [moves.StatusChange(
        ENTERPRISE, pipeline["id"], r, "running", "bench", None, {}) for r in run_ids])
    await conn.execute("VACUUM ANALYZE")
    return pipeline["id"], run_ids


async def _size(conn, pid: int, pipeline_id, run_ids, state: dict, k: int,
                statements: int, around: list[str]) -> tuple[float, float]:
    """(µs of backend CPU per statement, ms wall per statement) for groups of k."""
    at = 0
    before, t0 = _cpu([pid]), time.perf_counter()
    for _ in range(statements):
        group = []
        for _ in range(k):
            run_id = run_ids[at % len(run_ids)]
            at += 1
            state[run_id] = "waiting" if state[run_id] == "running" else "running"
            group.append(moves.StatusChange(ENTERPRISE, pipeline_id, run_id, state[run_id],
                                            "bench", None, {}))
        if around:
            for statement in around:
                await conn.execute(statement)
        rows = await moves.change_statuses(conn, group, skip_locked=True)
        if around:
            await conn.execute(conn.get_reset_query())
        assert all(r["changed"] for r in rows), rows
    wall = (time.perf_counter() - t0) / statements * 1e3
    return (_cpu([pid]) - before) * 1e6 / statements, wall


async def main_async(dsn: str, args) -> None:
    conn = await asyncpg.connect(dsn)
    await meta.migrate(conn)
    await init_connection(conn)
    pipeline_id, run_ids = await _seed(conn, args.runs)
    await conn.close()
    variants = {"default": []}  # name -> statements around each one
    for setting in args.setting:  # SET once per connection
        variants[f"SET {setting} (session)"] = []
    for setting in args.around:
        variants[f"SET {setting} (around each)"] = [f"SET {setting}"]
    # One connection per variant; each flips its own share of the runs.
    share = len(run_ids) // len(variants)
    sides = {}
    for n, (name, around) in enumerate(variants.items()):
        c = await asyncpg.connect(dsn)
        await init_connection(c)
        if name.endswith("(session)"):
            await c.execute(name.removesuffix(" (session)"))
        mine = run_ids[n * share:(n + 1) * share]
        sides[name] = (c, await c.fetchval("SELECT pg_backend_pid()"), mine,
                       {r: "running" for r in mine}, around)
    sizes = [int(s) for s in args.sizes.split(",")]
    for k in sizes:  # warm up: the plan cache's first five custom plans
        for c, pid, mine, state, around in sides.values():
            await _size(c, pid, pipeline_id, mine, state, k, 10, around)
    results = {(name, k): [] for name in variants for k in sizes}
    for _ in range(args.rounds):  # the variants alternate, size by size
        for k in sizes:
            for name, (c, pid, mine, state, around) in sides.items():
                results[name, k].append(await _size(c, pid, pipeline_id, mine, state, k,
                                                    args.statements, around))
    for name, (c, *_) in sides.items():
        plans = await c.fetchrow("SELECT sum(generic_plans) AS g, sum(custom_plans) AS c "
                                 "FROM pg_prepared_statements WHERE statement LIKE '%appended%'")
        print(f"{name}: {plans['g']} generic, {plans['c']} custom plans")
        await c.close()
    print("| variant | changes | DB CPU µs/statement | µs/change | wall ms/statement |\n"
          "|---|---:|---:|---:|---:|")
    for k in sizes:
        for name in variants:
            cpu = statistics.median(c for c, _ in results[name, k])
            wall = statistics.median(w for _, w in results[name, k])
            print(f"| {name} | {k} | {cpu:,.0f} | {cpu / k:,.1f} | {wall:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1500)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--statements", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setting", action="append", default=[],
                        help="a SET on the connection first, e.g. 'plan_cache_mode = "
                             "force_generic_plan' (repeatable)")
    parser.add_argument("--around", action="append", default=[],
                        help="a SET before each statement, and asyncpg's reset query after "
                             "it (what a pooled connection's session setting costs)")
    args = parser.parse_args()
    name = f"group_cost_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            asyncio.run(main_async(scratchdb.dsn_for(admin, name), args))
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
