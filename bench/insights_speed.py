"""Issue 21's two insights answers on a seeded database, alone: idle, then with writers.

bench/scale.py times them too, after all the run lists; this times only them, on a database
seeded by it (`bench/scale.py --db NAME --keep`, or a copy: CREATE DATABASE x TEMPLATE y),
migrated first. R requests each, one at a time, through HTTP; then again while W writers
change statuses through the same service (scale.py's writers: running <-> waiting).

    .venv/bin/python bench/insights_speed.py --db NAME [--requests 100] [--writers 8]
                                             [--write-rate 400]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a database seeded by bench/scale.py")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--write-rate", type=float, default=400,
                        help="their changes/s together (0: as fast as answered)")
    args = parser.parse_args()
    workdir = ROOT / ".data"
    workdir.mkdir(exist_ok=True)
    with scale.admin_dsn() as admin:
        dsn = scale._dsn_for(admin, args.db)
        info = asyncio.run(scale.prepare(dsn))
        runs = asyncio.run(scale._writable_runs(dsn, 100 * args.writers))
        with scale.service(dsn, workdir) as base:
            cases = scale.insight_cases(info)
            idle = asyncio.run(scale.measure(base, info["token"], cases, args.requests))
            with scale.Writers(base, info["writer_token"], runs, args.writers,
                               args.write_rate) as writers:
                busy = asyncio.run(scale.measure(base, info["token"], cases, args.requests))
    print(f"{info['runs']:,} runs; writers: {writers.writers} at {writers.rate:,.0f} "
          f"changes/s ({writers.failed} not 200)")
    for label, rows in (("idle", idle), ("busy", busy)):
        for r in rows:
            print(f"{label} {r['label']:<48} rows {r['count']:>6} p50 {r['p50']:7.1f} "
                  f"p95 {r['p95']:7.1f} p99 {r['p99']:7.1f} max {r['max']:7.1f} ms")
    print("\n".join(scale.insight_lines(idle, busy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
