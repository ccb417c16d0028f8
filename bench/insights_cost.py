"""Issue 21's two insights answers in-process: wall time and CPU (this process and its
PostgreSQL backend, from /proc) per answer, on a seeded database (`bench/scale.py --db NAME
--keep`, or a copy of one), migrated first. CPU is what to compare on a shared machine.

    .venv/bin/python bench/insights_cost.py --db NAME [--requests 30] [--start-hour H]

--start-hour: answer as if it were H:30 UTC today (the 90-day window then starts at H:00,
so H decides how many hours at its start come from the hourly rows: H % 6 = 3 is the most).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

from service.app import insights  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import meta  # noqa: E402

ENTERPRISE = "scale"
TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK * 1000


async def measure(dsn: str, requests: int, start_hour: int | None) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await meta.migrate(conn)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        now = datetime.now(timezone.utc)
        if start_hour is not None:
            now = now.replace(hour=start_hour, minute=30)
        cases = [("30 days granularity=day",
                  {"start": now - timedelta(days=30), "granularity": "day"}),
                 ("90 days group_by=pipeline",
                  {"start": now - timedelta(days=90), "group_by": "pipeline"})]
        lines = []
        for label, kw in cases:
            for _ in range(2):  # warm-up
                await insights.insights(conn, ENTERPRISE, end=now, now=now, **kw)
            walls = []
            db, py = backend_cpu_ms(pid), time.process_time()
            for _ in range(requests):
                started = time.perf_counter()
                answer = await insights.insights(conn, ENTERPRISE, end=now, now=now, **kw)
                walls.append((time.perf_counter() - started) * 1000)
            db = (backend_cpu_ms(pid) - db) / requests
            py = (time.process_time() - py) * 1000 / requests
            walls.sort()
            p95 = walls[max(0, round(0.95 * len(walls)) - 1)]
            lines.append(f"{label:<26} rows {len(answer['rows']):>4}  wall p50 "
                         f"{statistics.median(walls):7.1f} p95 {p95:7.1f} ms  CPU per answer: "
                         f"python {py:6.1f} + postgres {db:6.1f} = {py + db:6.1f} ms")
        return lines
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--start-hour", type=int, choices=range(24), metavar="H")
    args = parser.parse_args()
    with scratchdb.admin_dsn() as admin:
        lines = asyncio.run(measure(scratchdb.dsn_for(admin, args.db), args.requests,
                                    args.start_hour))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
