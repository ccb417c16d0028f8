"""`make bench`, last part: read throughput and p99 with and without a read replica.

A private primary and its hot standby (tests/pgcluster.py: initdb, then pg_basebackup -R),
runs seeded on the primary, and the service started on the same data twice: DATABASE_URL
only, then also READ_DATABASE_URLS naming the standby. The same GET load (a run by id, no
Consistency-Token: the standby answers) on each, alternately.

On one machine the standby shares the CPU with the primary (2 cores here, shared), so this
measures what routing costs (the position read after each read, the choice of a standby),
not the capacity a standby on its own machine adds.

    .venv/bin/python bench/replicas.py [--runs 200] [--seconds 5] [--rounds 1]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import asyncpg  # noqa: E402

import load  # noqa: E402
import pgcluster  # noqa: E402
import run as bench_run  # noqa: E402


async def _caught_up(primary_dsn: str, standby_dsn: str, timeout: float = 60) -> None:
    primary, standby = await asyncpg.connect(primary_dsn), await asyncpg.connect(standby_dsn)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout
        while not await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
            if time.monotonic() > deadline:
                raise RuntimeError("the standby did not catch up")
            await asyncio.sleep(0.05)
    finally:
        await primary.close()
        await standby.close()


def measure(args, server, state: Path, label: str, results: dict) -> None:
    if args.warmup > 0:
        load.run_load(args.load, server.base, "GET", state, "", connections=args.connections,
                      seconds=args.warmup)
    result = load.run_load(args.load, server.base, "GET", state, "",
                           connections=args.connections, seconds=args.seconds)
    results.setdefault(label, []).append(result)
    print(f"  {label:<18} {result.rps:>8,.0f} req/s  p50 {bench_run._f(result.p50_ms)} ms  "
          f"p99 {bench_run._f(result.p99_ms)} ms  non-2xx {result.non_2xx}  "
          f"errors {result.errors}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--load", choices=["wrk", "python"],
                        default="wrk" if load.wrk_available() else "python")
    args = parser.parse_args(argv)
    reason = pgcluster.available()
    if reason is not None:
        print(f"replica bench skipped: {reason}")
        return 0
    primary = pgcluster.PrivatePostgres()
    standby = None
    results: dict[str, list] = {}
    try:
        primary.start()
        asyncio.run(bench_run._admin(primary.dsn, 'CREATE DATABASE "bench"'))
        dsn = primary.dsn_for("bench")
        print(f"replicas: seeding {args.runs} runs, then a standby ...", flush=True)
        seeded = asyncio.run(bench_run.seed(dsn, args.runs))
        standby = pgcluster.PrivatePostgres(standby_of=primary)
        standby.start()
        asyncio.run(_caught_up(dsn, standby.dsn_for("bench")))
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
            state = Path(tmp) / "reads.tsv"
            load.write_state(state, [(f"{bench_run.MOUNT}/pipelines/{p}/runs/{r}/", "running", t)
                                     for p, r, t in seeded.service_runs])
            sides = {"primary only": {},
                     "with a replica": {"READ_DATABASE_URLS": standby.dsn_for("bench")}}
            for _ in range(args.rounds):
                for label, env in sides.items():
                    server = bench_run.start_service(dsn, Path(tmp), extra_env=env)
                    try:
                        measure(args, server, state, label, results)
                    finally:
                        server.stop()
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()
    print(report(args, results))
    return 1 if any(r.non_2xx or r.errors for rs in results.values() for r in rs) else 0


def report(args, results: dict) -> str:
    lines = [f"\nGET a run by id, {args.connections} connections, {args.seconds:g} s x "
             f"{args.rounds} ({args.load}); the standby on the same machine:",
             "| reads | req/s | p99 ms |", "|---|---|---|"]
    for label, rounds in results.items():
        rps = sum(r.rps for r in rounds) / len(rounds)
        p99 = [r.p99_ms for r in rounds if r.p99_ms is not None]
        lines.append(f"| {label} | {rps:,.0f} | {bench_run._f(max(p99) if p99 else None)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
