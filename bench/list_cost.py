"""What a run list's first page costs at scale: CPU per request of the service process, of
its PostgreSQL backends and of this client, beside the wall time, case by case.

Wall times on a shared 2-core machine move with the load; CPU per request moves less, so it
is the figure to compare two versions of the code by. With --writers W, scale.py's paced
writers (a process of their own) change statuses meanwhile, and their own cost is measured
first, alone: the CPU a status change costs the service and PostgreSQL.

    .venv/bin/python bench/list_cost.py --db NAME [--requests 30] [--writers 8]
                                        [--write-rate 400] [--only REGEX]

NAME: a database seeded by bench/scale.py (`--db NAME --keep`), or a copy of one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

import scale  # noqa: E402

def cpu_ms(pid: int) -> float:
    """CPU time of a process so far, all its threads (0 once it is gone): schedstat's
    nanoseconds, as /proc/PID/stat's ticks of 10 ms are too coarse for a request."""
    try:
        return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
                   for t in os.listdir(f"/proc/{pid}/task")) / 1e6
    except OSError:
        return 0.0


class Meter:
    """CPU of the service process and of every backend of the database but our own."""

    def __init__(self, monitor: asyncpg.Connection, dbname: str, service_pid: int):
        self.monitor, self.dbname, self.service_pid = monitor, dbname, service_pid

    async def read(self) -> tuple[float, float, dict[int, float]]:
        pids = await self.monitor.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.dbname)
        backends = {r["pid"]: cpu_ms(r["pid"]) for r in pids}
        return cpu_ms(self.service_pid), time.process_time() * 1000, backends

    @staticmethod
    def spent(before, after) -> tuple[float, float, float]:
        """(service, client, postgres) ms between two reads; a backend new since counts whole."""
        db = sum(v - before[2].get(pid, 0.0) for pid, v in after[2].items())
        return after[0] - before[0], after[1] - before[1], db


async def one_case(session: aiohttp.ClientSession, url: str, meter: Meter,
                   requests: int) -> dict:
    for _ in range(3):  # warm-up
        async with session.get(url) as resp:
            await resp.read()
    walls = []
    before = await meter.read()
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url) as resp:
            body = await resp.read()
        walls.append((time.perf_counter() - started) * 1000)
        if resp.status != 200:
            raise SystemExit(f"{url}: {resp.status} {body[:300]!r}")
    service, client, db = Meter.spent(before, await meter.read())
    walls.sort()
    return {"p50": statistics.median(walls), "p99": scale._percentile(walls, 0.99),
            "service": service / requests, "db": db / requests, "client": client / requests}


async def writers_alone(meter: Meter, writers: scale.Writers, seconds: float) -> str:
    await asyncio.sleep(2)  # the writers' process starts and connects
    before, counted, started = await meter.read(), writers.counts[0], time.perf_counter()
    client = cpu_ms(writers.proc.pid)
    await asyncio.sleep(seconds)
    service, _, db = Meter.spent(before, await meter.read())
    client = cpu_ms(writers.proc.pid) - client
    done = writers.counts[0] - counted
    rate = done / (time.perf_counter() - started)
    return (f"writers alone: {rate:,.0f} changes/s; per change: service {service / done:.2f} "
            f"ms, postgres {db / done:.2f} ms, their client {client / done:.2f} ms; of one "
            f"core: service {service / seconds / 10:.0f} %, postgres {db / seconds / 10:.0f} %,"
            f" their client {client / seconds / 10:.0f} %")


async def measure(dsn: str, dbname: str, base: str, pid: int, info: dict,
                  cases: list[tuple[str, str]], requests: int,
                  writers: scale.Writers | None) -> list[str]:
    monitor = await asyncpg.connect(dsn)
    meter = Meter(monitor, dbname, pid)
    lines = []
    try:
        if writers is not None and writers.writers:
            lines.append(await writers_alone(meter, writers, 10.0))
        headers = {"Authorization": f"Bearer {info['token']}"}
        lines += [f"{'case':<58} {'p50':>6} {'p99':>6}   CPU ms/request: {'service':>7} "
                  f"{'postgres':>8} {'client':>6}"]
        totals = []
        async with aiohttp.ClientSession(headers=headers) as session:
            for label, path in cases:
                r = await one_case(session, base + scale.MOUNT + path, meter, requests)
                totals.append(r)
                lines.append(f"{label:<58} {r['p50']:6.1f} {r['p99']:6.1f}   {'':>15}"
                             f"{r['service']:7.2f} {r['db']:8.2f} {r['client']:6.2f}")
        if not totals:
            return lines
        mean = {k: statistics.mean(t[k] for t in totals) for k in ("service", "db", "client")}
        worst = max(totals, key=lambda t: t["p99"])
        lines.append(f"mean CPU per request: service {mean['service']:.2f} ms, postgres "
                     f"{mean['db']:.2f} ms, client {mean['client']:.2f} ms; worst p99 "
                     f"{worst['p99']:.1f} ms; load average {os.getloadavg()[0]:.1f}")
    finally:
        await monitor.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--writers", type=int, default=0)
    parser.add_argument("--write-rate", type=float, default=400)
    parser.add_argument("--only", help="cases whose label matches this regular expression")
    parser.add_argument("--server-times", action="store_true",
                        help="also the service's own durations (its access lines) of the "
                             "lists and of the writes, beside the client's wall times")
    args = parser.parse_args()
    workdir = ROOT / ".data"
    workdir.mkdir(exist_ok=True)
    with scale.admin_dsn() as admin:
        dsn = scale._dsn_for(admin, args.db)
        info = asyncio.run(scale.prepare(dsn))
        runs = asyncio.run(scale._writable_runs(dsn, 100 * max(args.writers, 1)))
        cases = [c for c in scale.cases(info) if not args.only or re.search(args.only, c[0])]
        level = "INFO" if args.server_times else "WARNING"
        with scale.service_process(dsn, workdir, log_level=level) as (base, proc):
            with scale.Writers(base, info["writer_token"], runs, args.writers,
                               args.write_rate) as writers:
                lines = asyncio.run(measure(dsn, args.db, base, proc.pid, info, cases,
                                            args.requests, writers))
    if args.writers:
        lines.append(f"writers over the whole run: {writers.rate:,.0f} changes/s "
                     f"({writers.failed} not 200)")
    if args.server_times:
        lines += server_times(workdir / "scale-service.log")
    print("\n".join(lines))
    return 0


def server_times(log: Path) -> list[str]:
    """Percentiles of the access lines' duration_ms (middleware entry to answer) by kind."""
    kinds: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        if not line.startswith("{") or '"duration_ms"' not in line:
            continue
        entry = json.loads(line)
        kind = f"{entry['method']} {entry['route']}"
        kinds.setdefault(kind, []).append(entry["duration_ms"])
    out = ["service's own durations (access lines):"]
    for kind, values in sorted(kinds.items()):
        values.sort()
        out.append(f"  {kind:<60} n {len(values):>6}  p50 {statistics.median(values):6.1f}  "
                   f"p99 {scale._percentile(values, 0.99):6.1f}  max {values[-1]:6.1f} ms")
    return out


if __name__ == "__main__":
    sys.exit(main())
