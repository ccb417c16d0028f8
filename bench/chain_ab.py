"""The write path with and without the hash chain's triggers: a small local A/B.

A scratch database; C connections write flat out for S seconds per round, with the chain
triggers (schema.sql, "Tamper evidence") enabled (A) and disabled (B), alternately A B B A:
- flip: the one-statement status change running <-> waiting (store/moves.py), one event
  per statement and transaction: a PUT's append;
- copy: COPY of 500 events of one enterprise a transaction (store/append.copy_events): the
  seeder's append.
Per phase: statements (or events) per second, and, when PostgreSQL runs on this machine,
the database CPU per event (utime + stime of the connections' backends, from /proc, so
waiting for a busy core is not counted). A against B. The lead measures on a quiet machine.

    .venv/bin/python bench/chain_ab.py [--connections 8] [--seconds 5] [--rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

from service.domain import lifecycle  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import append, meta, moves, pipelines, runs  # noqa: E402

# The chain's triggers on run_events (whatever their form: older schemas named them alike).
TRIGGERS = ("SELECT tgname FROM pg_trigger WHERE tgrelid = 'run_events'::regclass "
            "AND tgname LIKE 'run\\_events\\_chain%'")
COPY_EVENTS = 500
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> float | None:
    """CPU seconds the backends used so far (None when they are not on this machine)."""
    try:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / TICK
    except (OSError, IndexError, ValueError):
        return None


async def _toggle(conn: asyncpg.Connection, on: bool) -> None:
    for name in [r["tgname"] for r in await conn.fetch(TRIGGERS)]:
        await conn.execute(f"ALTER TABLE run_events {'ENABLE' if on else 'DISABLE'} "
                           f"TRIGGER {name}")


async def _worker(conn: asyncpg.Connection, kind: str, n: int, pipeline_id, run_ids: list,
                  stop: float) -> int:
    enterprise = f"ab-{n}"  # one enterprise per connection: no feed lock waits between them
    done = 0
    state = {r: "running" for r in run_ids}
    while time.perf_counter() < stop:
        if kind == "flip":
            run_id = run_ids[done % len(run_ids)]
            state[run_id] = "waiting" if state[run_id] == "running" else "running"
            await moves.change_statuses(conn, [moves.StatusChange(
                enterprise, pipeline_id[n], run_id, state[run_id], "bench", None, {})])
            done += 1
        else:
            now = dt.datetime.now(dt.timezone.utc)
            records = [(enterprise, pipeline_id[n], uuid.uuid4(), 1, lifecycle.RUN_CREATED,
                        None, "pending", "bench", None, now, {}) for _ in range(COPY_EVENTS)]
            async with conn.transaction():
                await append.copy_events(conn, enterprise, records)
            done += COPY_EVENTS
    return done


async def _phase(conns: list, pids: list[int], kind: str, seconds: float, pipeline_ids,
                 run_ids) -> tuple[float, float | None]:
    before = _cpu(pids)
    stop = time.perf_counter() + seconds
    done = sum(await asyncio.gather(*(
        _worker(c, kind, n, pipeline_ids, run_ids[n], stop) for n, c in enumerate(conns))))
    after = _cpu(pids)
    cpu = None if before is None or after is None else (after - before) * 1e6 / done
    return done / seconds, cpu


async def main_async(dsn: str, args) -> list[tuple]:
    conn = await asyncpg.connect(dsn)
    await meta.migrate(conn)
    await init_connection(conn)
    conns = [await asyncpg.connect(dsn) for _ in range(args.connections)]
    for c in conns:
        await init_connection(c)
    pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
    pipeline_ids, run_ids = [], []
    for n in range(args.connections):
        pipeline = await pipelines.create_pipeline(conn, f"ab-{n}", 1, {"name": "ab"})
        pipeline_ids.append(pipeline["id"])
        mine = []
        for _ in range(args.runs):
            run, _ = await runs.create_run(conn, f"ab-{n}", pipeline["id"], "pending", "bench",
                                           None, lifecycle.RUN_CREATED, {}, 3600, 3600)
            await moves.change_statuses(conn, [moves.StatusChange(
                f"ab-{n}", pipeline["id"], run["id"], "running", "bench", None, {})])
            mine.append(run["id"])
        run_ids.append(mine)
    results = []
    try:
        for round_ in range(args.rounds):
            for on in ((True, False) if round_ % 2 == 0 else (False, True)):  # ABBA
                await _toggle(conn, on)
                for kind in ("flip", "copy"):
                    rate, cpu = await _phase(conns, pids, kind, args.seconds, pipeline_ids,
                                             run_ids)
                    results.append((round_, "A with" if on else "B without", kind, rate, cpu))
        await _toggle(conn, True)
    finally:
        for c in conns:
            await c.close()
        await conn.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50, help="runs flipped per connection")
    args = parser.parse_args()
    name = f"pr_ab_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            results = asyncio.run(main_async(scratchdb.dsn_for(admin, name), args))
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print("| round | chain | phase | per second | database CPU µs/event |\n|---|---|---|---|---|")
    for r in results:
        cpu = "-" if r[4] is None else f"{r[4]:.1f}"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.0f} | {cpu} |")
    for kind in ("flip", "copy"):
        a = [r for r in results if r[2] == kind and r[1].startswith("A")]
        b = [r for r in results if r[2] == kind and r[1].startswith("B")]
        rate_a, rate_b = (sum(r[3] for r in x) / len(x) for x in (a, b))
        line = (f"{kind}: with the chain {rate_a:,.0f}/s, without {rate_b:,.0f}/s: "
                f"{100 * (rate_a - rate_b) / rate_b:+.1f}%")
        if all(r[4] is not None for r in a + b):
            cpu_a, cpu_b = (sum(r[4] for r in x) / len(x) for x in (a, b))
            line += f"; database CPU {cpu_a:.1f} vs {cpu_b:.1f} µs/event"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
