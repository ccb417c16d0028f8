"""The CPU of a run's GET through the app and its database round trip, in process: µs/request.

The app (its real middleware, auth, rate limit, validation, consistency token, pool,
slots, handler, store, envelope, metrics and access line to /dev/null) answers mocked
GETs of seeded runs, 32 at a time as under wrk -c32, on a scratch database: what bench/get_cost.py measures
less HTTP parsing, the response's writing and wrk, so far steadier. This process's CPU
per request (the best of the repeats), and its database backend's (schedstat) alongside.
Run it from two checkouts in turn (A B B A) to compare them, or let bench/get_path_ab.py
run both at once, batch for batch (--repeats 0: a batch per "go" line on stdin).
--bare alternates the app's batches with a bare handler's (the statement, the row's dict,
the envelope; nothing else) on the same pool: what the app's layers cost in all.

    .venv/bin/python bench/get_path_cost.py [--runs 200] [--requests 5000] [--repeats 7] [--concurrency 32]
        [--bare]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402

import run as bench_run  # noqa: E402
import scratchdb  # noqa: E402
from service.config import Config  # noqa: E402
from service.infra import logs  # noqa: E402
from service.infra.runtime import new_event_loop  # noqa: E402
from service.store.columns import run_of_row  # noqa: E402
from service.store.runs import SELECT_RUN  # noqa: E402
from service.web.app import create_app  # noqa: E402
from service.web.envelope import envelope  # noqa: E402
from service.web.keys import POOL  # noqa: E402

MOUNT = "/pipelines/v0"


def _schedstat(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except OSError:
            pass
    return total


async def _backends(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'pipeline-runs'")]
    finally:
        await conn.close()


def _bare_app(pool, seeded) -> tuple[web.Application, list]:
    """The GET's work and nothing else, on the app's pool: the run's statement, its row as
    a dict, the envelope (no auth, limit, validation, token, slots, metrics or log)."""
    async def get_run(request: web.Request) -> web.Response:
        info = request.match_info
        row = await pool.fetchrow(SELECT_RUN, bench_run.ENTERPRISE, uuid.UUID(info["pipeline_id"]),
                                  uuid.UUID(info["run_id"]))
        return envelope(run_of_row(row))

    bare = web.Application()
    bare.router.add_get("/bare/{pipeline_id}/runs/{run_id}/", get_run)
    bare.freeze()
    made = [make_mocked_request("GET", f"/bare/{p}/runs/{r}/", app=bare, protocol=SimpleNamespace(
        ssl_context=None, peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080)))
        for p, r, _ in seeded]
    return bare, made


async def measure(dsn: str, seeded, requests: int, repeats: int,
                  concurrency: int, bare: bool = False) -> tuple[float, float]:
    logs.setup_logging(Config(), open(os.devnull, "w"))
    app = create_app(Config(database_url=dsn, rate_limit_rps=100000,
                            rate_limit_burst=100000))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        # A plain protocol object, not make_mocked_request's Mock: each request made reads
        # its attributes, which a Mock answers at ~40 µs a request.
        templates = [make_mocked_request(
            "GET", f"{MOUNT}/pipelines/{p}/runs/{r}/", app=app,
            headers={"Authorization": f"Bearer {token}"},
            protocol=SimpleNamespace(ssl_context=None, peername=("127.0.0.1", 50000),
                                     sockname=("127.0.0.1", 8080)))
            for p, r, token in seeded]

        async def client(target, made, first: int, n: int) -> None:
            for i in range(first, first + n):
                response = await target._handle(made[i % len(made)].clone())
                assert response.status == 200, response.text

        async def batch(n: int, target=app, made=templates) -> float:
            started = time.process_time()
            each = n // concurrency
            await asyncio.gather(*(client(target, made, k * each, each)
                                   for k in range(concurrency)))
            return (time.process_time() - started) / (each * concurrency) * 1e6

        await batch(1000)  # warm up: plans, the token cache, prepared statements
        backends = await _backends(dsn)
        if bare:
            lean, lean_requests = _bare_app(app[POOL], seeded)
            await batch(1000, lean, lean_requests)
            pairs = [(await batch(requests), await batch(requests, lean, lean_requests))
                     for _ in range(repeats)]
            diffs = sorted(full - less for full, less in pairs)
            print(f"the app: median {statistics.median(p[0] for p in pairs):.1f} µs, the bare "
                  f"handler: median {statistics.median(p[1] for p in pairs):.1f} µs; the app's "
                  f"layers, paired: median {statistics.median(diffs):.1f} (middle half "
                  f"{diffs[len(diffs) // 4]:.1f} .. {diffs[3 * len(diffs) // 4]:.1f})")
            return 0.0, 0.0

        async def measured() -> tuple[float, float]:
            db_before = _schedstat(backends)
            cost = await batch(requests)
            return cost, (_schedstat(backends) - db_before) / requests / 1000

        if repeats == 0:  # paired mode (bench/get_path_ab.py): a batch per line read
            print("ready", flush=True)
            while sys.stdin.readline().strip() == "go":
                print("%.2f %.2f" % await measured(), flush=True)
            return 0.0, 0.0
        costs, db_costs = zip(*[await measured() for _ in range(repeats)])
        return min(costs), sorted(db_costs)[len(db_costs) // 2]
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight at once (as wrk -c32 keeps the server busy)")
    parser.add_argument("--bare", action="store_true",
                        help="also a bare handler doing the GET's work alone on the same "
                             "pool, batch for batch: what the app's layers cost")
    args = parser.parse_args()
    name = f"get_path_cost_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            dsn = scratchdb.dsn_for(admin, name)
            seeded = asyncio.run(bench_run.seed(dsn, args.runs)).service_runs
            # As the owner role: the runtime role is made by `serve`, not run here.
            loop = new_event_loop(Config())  # the service's: uvloop when installed
            try:
                cost, db_cost = loop.run_until_complete(measure(
                    dsn, seeded, args.requests, args.repeats, args.concurrency, args.bare))
            finally:
                loop.close()
            if args.repeats == 0 or args.bare:
                return
            print(f"GET run in process: {cost:.1f} µs of CPU per request (best of "
                  f"{args.repeats}), database {db_cost:.1f} (median)")
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
