"""The CPU a GET (or, with --put, a status PUT) of a run costs the service per request.

CPU time per request is far steadier than requests/s on a shared machine: the service
(one process) is loaded with wrk for a few seconds and its user + system CPU seconds,
read from /proc before and after, are divided by the requests answered. With --profile
the service runs under cProfile and the functions costing most are printed (cProfile
slows everything and counts CPU time: read the
shares, not the totals). With --put the load flips each run running <-> waiting (as the
yardstick's PUT does) and the database backends' CPU per request is printed too. With
--reference the yardstick's lean reference (../shared/bench/lean_app.py on its own
lean_schema.sql database) is measured the same way, under the same load on its GET /runs/{id}.

Each round also prints the transactions (statements outside one) per request of every
session of the database, the feed's listener included. With --renice, run under
`nice -n -10`, the database backends get that priority too (a shared machine).

    .venv/bin/python bench/get_cost.py [--put] [--runs 200] [--enterprises 1] [--seconds 5]
        [--rounds 3] [--profile] [--put --lanes] [--renice] [--after-puts SECONDS]
    .venv/bin/python bench/get_cost.py --reference [--seconds 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402
import run as bench_run  # noqa: E402
import scratchdb  # noqa: E402


def _service_env(dsn: str) -> dict[str, str]:
    # As bench/run.py starts it (the runtime role where the checkout has one).
    env_of = getattr(scratchdb, "service_env", lambda d: {"DATABASE_URL": d})
    return {**os.environ, **env_of(dsn)}


def _state(dsn: str, seeded, path: Path, method: str) -> Path:
    """The runs to load, each with its next legal target (read from the database)."""
    statuses = (asyncio.run(bench_run._statuses(dsn, "SELECT id, status FROM pipeline_runs"))
                if method == "PUT" else {})
    load.write_state(path, [(f"{bench_run.MOUNT}/pipelines/{p}/runs/{r}/",
                             load.OTHER.get(statuses.get(r, ""), "running"), t)
                            for p, r, t in seeded.service_runs])
    return path


def _profiled_service(dsn: str, workdir: Path, out: Path) -> bench_run.Server:
    port = bench_run.free_port()
    log = workdir / f"service-{port}.log"
    # CPU time, not wall time: on a shared machine a preempted call would look costly.
    code = ("import cProfile, runpy, sys, time\n"
            "profile = cProfile.Profile(time.process_time)\n"
            f"sys.argv = ['service', 'serve', '--host', '127.0.0.1', '--port', '{port}']\n"
            "profile.enable()\n"
            "try:\n    runpy.run_module('service', run_name='__main__')\n"
            f"finally:\n    profile.disable()\n    profile.dump_stats({str(out)!r})\n")
    cmd = [sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_service_env(dsn),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = bench_run.Server("service (cProfile)", proc, port, log)
    bench_run._wait_ready(server, "/health/ready")
    return server


# Wraps the group commit's _commit and _position in the service process: per group, its
# size, whether another group of its lane was in flight, and when it started, got its
# statement's answer and its position; written as JSON lines at exit.
_LANE_TRACE = """
import atexit, json, runpy, sys, time
from service.app import groupcommit
rows = []
commit, position = groupcommit.GroupCommit._commit, groupcommit.GroupCommit._position
async def traced_commit(self, conn, group, *, overlapping):
    row = [len(group), overlapping, time.perf_counter(), None, None]
    rows.append(row)
    try:
        return await commit(self, conn, group, overlapping=overlapping)
    finally:
        row[4] = time.perf_counter()
async def traced_position(self, conn, *args):
    if rows:
        rows[-1][3] = time.perf_counter()
    return await position(self, conn, *args)
groupcommit.GroupCommit._commit, groupcommit.GroupCommit._position = traced_commit, traced_position
def dump():
    with open(OUT, 'w') as f:
        f.writelines(json.dumps(r) + '\\n' for r in rows)
atexit.register(dump)
sys.argv = ['service', 'serve', '--host', '127.0.0.1', '--port', PORT]
runpy.run_module('service', run_name='__main__')
"""


def _traced_service(dsn: str, workdir: Path, out: Path) -> bench_run.Server:
    port = bench_run.free_port()
    log = workdir / f"service-{port}.log"
    code = f"OUT = {str(out)!r}\nPORT = '{port}'\n" + _LANE_TRACE
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_service_env(dsn),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = bench_run.Server("service (lane trace)", proc, port, log)
    bench_run._wait_ready(server, "/health/ready")
    return server


def _print_lanes(path: Path, since: float) -> None:
    """The groups of the measured rounds: sizes, statement and position times, overlap."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r[2] >= since and r[4] is not None]
    if not rows:
        print("lanes: no group was traced")
        return
    statement = [((r[3] or r[4]) - r[2]) * 1e3 for r in rows]
    position = [(r[4] - r[3]) * 1e3 for r in rows if r[3] is not None]
    events = sorted([(r[2], 1) for r in rows] + [(r[4], -1) for r in rows])
    shares, flying, last = {}, 0, events[0][0]
    for at, step in events:
        shares[flying] = shares.get(flying, 0.0) + at - last
        flying, last = flying + step, at
    span = events[-1][0] - events[0][0]
    print(f"lanes: {len(rows)} groups, {sum(r[0] for r in rows) / len(rows):.1f} changes each "
          f"(median {statistics.median(r[0] for r in rows)}), "
          f"{sum(r[1] for r in rows) / len(rows):.0%} sent beside another of their lane")
    print(f"  statement wall ms: median {statistics.median(statement):.2f}, "
          f"mean {statistics.mean(statement):.2f}; position read ms: median "
          f"{statistics.median(position):.2f}" if position else "")
    print("  share of the time with k groups in flight: " + ", ".join(
        f"{k}: {v / span:.0%}" for k, v in sorted(shares.items())))


RENICE = False


def measure(server: bench_run.Server, dsn: str, method: str, state: Path, seconds: float,
            connections: int, threads: int = 1,
            side: str = "service") -> tuple[float, float, float]:
    """(µs of service CPU per request, µs of database CPU, requests/s) of one wrk round."""
    backends = asyncio.run(_backends(dsn) if side == "lean" else
                           bench_run._backend_pids(dsn, side))
    if RENICE:  # the backends at this process's priority, as the service and wrk are
        for pid in backends:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))
    before = bench_run._cpu_seconds([server.proc.pid])
    db_before = bench_run._cpu_seconds(backends)
    xacts = asyncio.run(_xacts(dsn))
    result = load.run_wrk(server.base, method, state, "", connections=connections,
                          seconds=seconds, threads=threads)
    used = bench_run._cpu_used(before, bench_run._cpu_seconds([server.proc.pid]))
    db_used = bench_run._cpu_used(db_before, bench_run._cpu_seconds(backends))
    if result.non_2xx or result.errors:
        raise RuntimeError(f"{result.non_2xx} non-2xx, {result.errors} errors")
    # Transactions (statements outside one) per request, of every session (the feed's
    # listener included): read after the sessions' statistics are flushed (every second).
    time.sleep(1.1)
    print(f"  {(asyncio.run(_xacts(dsn)) - xacts) / result.requests:.2f} transactions "
          f"per request")
    return used / result.requests * 1e6, db_used / result.requests * 1e6, result.rps


async def _xacts(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                   "WHERE datname = current_database()")
    finally:
        await conn.close()


async def _backends(dsn: str) -> list[int]:
    """Every client backend of the database but ours (the lean reference names none)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")]
    finally:
        await conn.close()


def _lean_dir() -> Path:
    """The yardstick's directory: ../shared/bench of the checkout (or of its worktrees')."""
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared" / "bench" / "lean_app.py").exists():
            return base / "shared" / "bench"
    sys.exit("no shared/bench/lean_app.py beside the checkout")


def reference(args, workdir: Path, admin: str) -> list[tuple[float, float, float]]:
    """The lean reference's rounds, on a database of its own (dropped after)."""
    lean = _lean_dir()
    name = f"get_cost_lean_{uuid.uuid4().hex[:8]}"
    asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        dsn = scratchdb.dsn_for(admin, name)
        asyncio.run(scratchdb.admin(dsn, (lean / "lean_schema.sql").read_text()))
        port = bench_run.free_port()
        log = workdir / f"lean-{port}.log"
        proc = subprocess.Popen([sys.executable, str(lean / "lean_app.py"), str(port)],
                                env={**os.environ, "DATABASE_URL": dsn},
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        server = bench_run.Server("lean reference", proc, port, log)
        try:
            bench_run._wait_ready(server, "/hello")
            state = workdir / "lean.state"  # the rows lean_schema.sql inserts, as get.lua asks
            load.write_state(state, [(f"/runs/{i}", "") for i in range(1, 10_001)])
            load.run_wrk(server.base, "GET", state, "", connections=args.connections, seconds=1)
            return [measure(server, dsn, "GET", state, args.seconds, args.connections, side="lean")
                    for _ in range(args.rounds)]
        finally:
            server.stop()
    finally:
        asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _print_functions(dsn: str, requests: float) -> None:
    """Each database function's own and total time, in µs per request (all rounds)."""
    async def fetch():
        conn = await asyncpg.connect(dsn)
        try:
            await asyncio.sleep(0.6)  # sessions report their counts at most every 0.5 s
            return await conn.fetch("SELECT funcname, calls, self_time, total_time "
                                    "FROM pg_stat_user_functions ORDER BY self_time DESC")
        finally:
            await conn.close()
    for row in asyncio.run(fetch()):
        print(f"  {row['funcname']:<36} {row['calls'] / requests:5.2f} calls "
              f"self {row['self_time'] * 1000 / requests:6.1f} µs  "
              f"total {row['total_time'] * 1000 / requests:6.1f} µs per request")


def _spy(server: bench_run.Server, args) -> subprocess.Popen:
    """py-spy sampling the service (its own CPU adds to the rounds' figures: read shares)."""
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.proc.pid),
           "--rate", "250", "--format", "raw", "--output", args.py_spy]
    # C frames need the process paused while sampled; without them it is not paused.
    return subprocess.Popen(cmd + (["--native"] if args.native else ["--nonblocking"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _print_rounds(rounds, label: str, count: int, side: str = "service") -> None:
    for cost, db_cost, rps in rounds:
        print(f"  {cost:7.1f} µs CPU/request (+ database {db_cost:.1f})  ({rps:,.0f} req/s)")
    print(f"{label}: {statistics.median(c for c, _, _ in rounds):.1f} µs of {side} "
          f"CPU per request, database "
          f"{statistics.median(d for _, d, _ in rounds):.1f} (median of {count})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--enterprises", type=int, default=1,
                        help="the runs spread over this many enterprises (a token each)")
    parser.add_argument("--threads", type=int, default=1, help="wrk's threads")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--put", action="store_true", help="status PUTs instead of GETs")
    parser.add_argument("--functions", action="store_true",
                        help="print the database functions' (triggers') time per request")
    parser.add_argument("--sql", default="",
                        help="run on the database once the service is up (an A/B: drop a "
                             "trigger ...; the service may migrate at start)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--py-spy", default="", metavar="FILE",
                        help="sample the service with py-spy during the rounds (collapsed "
                             "stacks to FILE; py-spy must be installed)")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--lanes", action="store_true",
                        help="with --put: trace the group commit's groups in the service (sizes, "
                             "statement and position times, groups in flight) over the rounds")
    parser.add_argument("--after-puts", type=float, default=0, metavar="SECONDS",
                        help="load the service with status PUTs this long before measuring "
                             "(the yardstick measures its GETs after its PUTs)")
    parser.add_argument("--renice", action="store_true",
                        help="give the service's database backends this process's priority "
                             "(run it under `nice -n -10` on a shared machine: the service "
                             "and wrk inherit it)")
    parser.add_argument("--reference", action="store_true",
                        help="measure the yardstick's lean reference's GET instead")
    args = parser.parse_args()
    global RENICE
    RENICE = args.renice
    if not load.wrk_available():
        sys.exit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="get-cost-"))
    if args.reference:
        with scratchdb.admin_dsn() as admin:
            rounds = reference(args, workdir, admin)
        _print_rounds(rounds, "lean reference GET", args.rounds, "process")
        return
    name = f"get_cost_{uuid.uuid4().hex[:8]}"
    with scratchdb.admin_dsn() as admin:
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            dsn = scratchdb.dsn_for(admin, name)
            if args.functions:  # the service's sessions count their PL/SQL functions' time
                asyncio.run(scratchdb.admin(
                    admin, f'ALTER DATABASE "{name}" SET track_functions = \'all\''))
            seeded = asyncio.run(bench_run.seed(dsn, args.runs, args.enterprises))
            method = "PUT" if args.put else "GET"
            state = workdir / "load.state"
            profile = workdir / "service.prof"
            spy = None
            lanes = workdir / "lanes.jsonl"
            server = (_profiled_service(dsn, workdir, profile) if args.profile
                      else _traced_service(dsn, workdir, lanes) if args.lanes
                      else bench_run.start_service(dsn, workdir))
            try:
                if args.sql:
                    asyncio.run(scratchdb.admin(dsn, args.sql))
                if args.after_puts:  # as the yardstick's GETs come after its PUT rounds
                    load.run_wrk(server.base, "PUT", _state(dsn, seeded, state, "PUT"), "",
                                 connections=args.connections, seconds=args.after_puts,
                                 threads=args.threads)
                load.run_wrk(server.base, method, _state(dsn, seeded, state, method), "",
                             connections=args.connections, seconds=1,
                             threads=args.threads)  # warm up
                spy = _spy(server, args) if args.py_spy else None
                since = time.perf_counter()
                rounds = [measure(server, dsn, method, _state(dsn, seeded, state, method),
                                  args.seconds, args.connections, args.threads)
                          for _ in range(args.rounds)]
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait()
                server.stop()
            _print_rounds(rounds, "PUT status" if args.put else "GET run", args.rounds)
            if args.lanes:
                _print_lanes(lanes, since)
            if args.functions:
                _print_functions(dsn, sum(r for _, _, r in rounds) * args.seconds)
            if args.profile:
                stats = pstats.Stats(str(profile))
                stats.sort_stats("tottime").print_stats(args.top)
                stats.sort_stats("cumulative").print_stats(args.top)
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
