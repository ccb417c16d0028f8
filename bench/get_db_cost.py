"""The database's CPU for a GET's statement: µs of its backend per execution, by variant.

One connection runs each variant's prepared statement over random runs of a seeded
scratch database, one at a time; the backend's CPU is read from /proc/<pid>/schedstat
(nanoseconds) around each batch. Variants alternate (A B A B ...) and the median batch
of each is printed, so other work on the machine moves them alike. The variants: the
service's SELECT_RUN as it is, and pieces left out to see what each costs; the lean
reference's GET (and the reset its pool runs after it) too, on its own table made from
../shared/bench/lean_schema.sql.

    .venv/bin/python bench/get_db_cost.py [--runs 1500] [--executions 4000] [--rounds 5]
        [--explain]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402
import scratchdb  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import runs as run_store  # noqa: E402
from service.store.columns import run_select  # noqa: E402

LEAN_DIR = next((base / "shared" / "bench" for base in (ROOT.parent, ROOT.parent.parent)
                 if (base / "shared" / "bench" / "lean_schema.sql").exists()), None)
VARIANTS = {
    "SELECT_RUN (the service's)": run_store.SELECT_RUN,
    "the position as pg_lsn (no numeric arithmetic)": (
        f"SELECT {run_select()}, CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
        f"pg_current_wal_insert_lsn() END AS wal_position FROM {run_store.RUN_JOIN} "
        "WHERE r.enterprise_id = $1 AND r.pipeline_id = $2 AND r.id = $3"),
    "without the position column": f"SELECT {run_select()} FROM {run_store.RUN_JOIN} "
                                   "WHERE r.enterprise_id = $1 AND r.pipeline_id = $2 "
                                   "AND r.id = $3",
    "the run row only (no join, no position)": "SELECT r.* FROM pipeline_runs r WHERE "
                                               "r.enterprise_id = $1 AND r.pipeline_id = $2 "
                                               "AND r.id = $3",
    "SELECT 1 (the protocol alone)": "SELECT $1::text, $2::uuid, $3::uuid",
}
# The yardstick's lean reference (../shared/bench/lean_app.py): its GET's statement, and the
# reset its pool runs on every release (a second round trip per GET), on its own table.
LEAN_GET = "SELECT id, status, version FROM lean_runs WHERE id = $1"
LEAN_RESET = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"


def _schedstat(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def _batch(conn, pid: int, sql: str, keys: list, executions: int) -> float:
    """µs of backend CPU per execution of `sql` over `executions` random keys."""
    statement = await conn.prepare(sql)
    picks = [random.choice(keys) for _ in range(executions)]
    before = _schedstat(pid)
    for key in picks:
        await statement.fetchrow(*key)
    return (_schedstat(pid) - before) / executions / 1000


async def _lean_batch(conn, pid: int, executions: int, reset: bool) -> float:
    statement = await conn.prepare(LEAN_GET)
    picks = [random.randint(1, 10_000) for _ in range(executions)]
    before = _schedstat(pid)
    for key in picks:
        await statement.fetchrow(key)
        if reset:
            await conn.execute(LEAN_RESET)
    return (_schedstat(pid) - before) / executions / 1000


async def measure(dsn: str, keys: list, executions: int, rounds: int) -> dict[str, list[float]]:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        pid = conn.get_server_pid()
        for sql in VARIANTS.values():  # warm: plans cached, pages in shared buffers
            await _batch(conn, pid, sql, keys, 200)
        await _lean_batch(conn, pid, 200, True)
        costs: dict[str, list[float]] = {name: [] for name in VARIANTS}
        costs["lean reference: its GET"], costs["lean reference: its GET + reset"] = [], []
        for _ in range(rounds):
            for name, sql in VARIANTS.items():
                costs[name].append(await _batch(conn, pid, sql, keys, executions))
            costs["lean reference: its GET"].append(
                await _lean_batch(conn, pid, executions, False))
            costs["lean reference: its GET + reset"].append(
                await _lean_batch(conn, pid, executions, True))
        return costs
    finally:
        await conn.close()


async def explain(dsn: str, key: tuple) -> None:
    """SELECT_RUN's plan as a prepared statement runs it (after the executions that let
    the plan cache settle on a generic plan), with its buffers and times."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"PREPARE get_run(text, uuid, uuid) AS {run_store.SELECT_RUN}")
        arguments = f"'{key[0]}', '{key[1]}', '{key[2]}'"
        for _ in range(6):
            await conn.execute(f"EXECUTE get_run({arguments})")
        for row in await conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE get_run({arguments})"):
            print("  " + row[0])
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1500)
    parser.add_argument("--executions", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print SELECT_RUN's plan first")
    args = parser.parse_args()
    if LEAN_DIR is None:
        sys.exit("no shared/bench/lean_schema.sql beside the checkout")
    name = f"get_db_cost_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            dsn = scratchdb.dsn_for(admin, name)
            seeded = asyncio.run(bench_run.seed(dsn, args.runs))
            asyncio.run(scratchdb.admin(dsn, (LEAN_DIR / "lean_schema.sql").read_text()))
            keys = [(bench_run.ENTERPRISE, uuid.UUID(p), uuid.UUID(r))
                    for p, r, _ in seeded.service_runs]
            if args.explain:
                asyncio.run(explain(dsn, keys[0]))
            started = time.perf_counter()
            costs = asyncio.run(measure(dsn, keys, args.executions, args.rounds))
            print(f"{args.rounds} rounds of {args.executions} executions each "
                  f"({time.perf_counter() - started:.1f} s); µs of backend CPU per execution:")
            for variant, values in costs.items():
                print(f"  {statistics.median(values):6.1f}  (min {min(values):5.1f})  {variant}")
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
