"""Insights answers for many windows, groupings and granularities, as JSON: run before and
after a change to the answers' code on the same database, and compare the two files.

    .venv/bin/python bench/insights_answers.py --db NAME --now 2026-12-06T21:30:00Z > a.json

--now fixes the answers' clock (their default windows and the hours that count as past);
the cases' windows end there, start at several hours of the day (ragged ends), and the
pipeline filters pick the busiest and a middling pipeline of the enterprise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

from service.app import insights  # noqa: E402
from service.infra.db import init_connection  # noqa: E402

ENTERPRISE = "scale"


def cases(now: datetime, busiest, middling, name: str) -> list[tuple[str, dict]]:
    """(label, keyword arguments of app.insights.insights) for each answer compared."""
    out = []
    for days, shifts in ((1, (0, 3, 5)), (7, (0, 2)), (30, (0, 3, 4)), (90, (0, 1, 3, 5)),
                         (200, (0, 3))):
        for shift in shifts:
            end = now - timedelta(hours=shift)
            start = end - timedelta(days=days, hours=shift)
            for granularity in (None, "hour", "day", "week", "month"):
                if granularity == "hour" and days > 7:
                    continue
                for group in (False, True):
                    if group and (granularity == "hour" and days > 1
                                  or granularity == "day" and days > 30):
                        continue  # past MAX_ROWS for 200 pipelines
                    out.append((f"{days}d-{shift}h {granularity} group={group}",
                                {"start": start, "end": end, "granularity": granularity,
                                 "group_by": "pipeline" if group else None}))
            out.append((f"{days}d-{shift}h day busiest+middling",
                        {"start": start, "end": end, "granularity": "day",
                         "pipeline_ids": [busiest, middling]}))
            out.append((f"{days}d-{shift}h week name grouped",
                        {"start": start, "end": end, "granularity": "week",
                         "pipeline_name": name, "group_by": "pipeline"}))
    return out


async def answers(dsn: str, now: datetime) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        ranked = await conn.fetch("""
            SELECT p.id, p.name FROM run_counts c JOIN pipelines p
              ON p.enterprise_id = c.enterprise_id AND p.id = c.pipeline_id
            WHERE c.enterprise_id = $1 GROUP BY p.id, p.name ORDER BY sum(c.n) DESC, p.id""",
                                  ENTERPRISE)
        busiest, middling = ranked[0], ranked[len(ranked) // 2]
        out = {}
        for label, kw in cases(now, busiest["id"], middling["id"], middling["name"]):
            out[label] = await insights.insights(conn, ENTERPRISE, now=now, **kw)
        return out
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--now", required=True, type=datetime.fromisoformat)
    args = parser.parse_args()
    with scratchdb.admin_dsn() as admin:
        out = asyncio.run(answers(scratchdb.dsn_for(admin, args.db), args.now))
    json.dump(out, sys.stdout, default=str, indent=1, sort_keys=True)
    print(f"{len(out)} answers, {sum(len(a['rows']) for a in out.values()):,} rows",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
