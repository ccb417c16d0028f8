"""Run-list query plans: every ordering x filter reads index ranges, never a scan of the
enterprise or a sort of a segment (20,000 runs, own database)."""
from __future__ import annotations

import json
import uuid

import pytest

from service.domain import lifecycle as lc
from service.store import run_lists


def _segment_problems(plan: dict) -> list[str]:
    """Every read of pipeline_runs is an index scan, and no segment sorts its rows."""
    problems = []

    def visit(node: dict, path: tuple[str, ...]):
        kind = node["Node Type"]
        if node.get("Relation Name") == "pipeline_runs":
            if kind not in ("Index Scan", "Index Only Scan"):
                problems.append(f"{kind} on pipeline_runs")
            elif "Sort" in path[-2:] or "Incremental Sort" in path[-2:]:
                problems.append(f"rows of {node['Index Name']} sorted")
        for child in node.get("Plans", ()):
            visit(child, path + (kind,))

    visit(plan["Plan"], ())
    return problems


@pytest.mark.own_db
async def test_every_ordering_and_single_filter_reads_index_ranges(db):
    """A 20,000-run enterprise: the first page of every ordering x filter is index ranges
    merged, never a scan of the enterprise or a sort of a segment."""
    enterprise = "plans"
    pipeline_ids = [uuid.uuid4() for _ in range(12)]
    await db.executemany(
        "INSERT INTO pipelines (enterprise_id, id, name) VALUES ($1, $2, $3)",
        [(enterprise, p, f"p{i % 10}") for i, p in enumerate(pipeline_ids)])
    # Rows written straight into the projection, dated over two weeks: the insights
    # triggers stand aside as for any bulk load (the seeder's setting); the plans are what
    # this test is about.
    await db.execute("BEGIN")
    await db.execute("SET LOCAL insights.bulk_load = 'on'")
    await db.execute("""
        INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status,
            created_at, updated_at, started_at, ended_at, version, deadline)
        SELECT $1, gen_random_uuid(), ($2::uuid[])[1 + g % 12], g,
               ($3::text[])[1 + (g * 7) % 11],
               t, t, CASE WHEN g % 3 > 0 THEN t END, CASE WHEN g % 4 = 0 THEN t END, 1, t
        FROM generate_series(1, 20000) g, LATERAL (SELECT now() - g * interval '1 min' AS t) x
    """, enterprise, pipeline_ids, list(lc.RUN_STATUSES))
    await db.execute("COMMIT")
    await db.execute("""INSERT INTO run_counts SELECT enterprise_id, pipeline_id, status, count(*)
                        FROM pipeline_runs GROUP BY 1, 2, 3""")
    await db.execute("ANALYZE")
    filters = {
        "none": run_lists.Filters(enterprise),
        "status": run_lists.Filters(enterprise, status="running"),
        "pipeline_name": run_lists.Filters(enterprise, pipeline_name="p1"),  # two pipelines
        "pipeline": run_lists.Filters(enterprise, pipeline_id=pipeline_ids[3]),
        "pipeline+status": run_lists.Filters(enterprise, pipeline_id=pipeline_ids[3],
                                             status="success"),
    }
    problems = {}
    for name, f in filters.items():
        for ordering in run_lists.ORDERS:
            if f.pipeline_id is not None and ordering and "pipeline__name" in ordering:
                continue
            for cursor in (None, "second page", "back from the third"):
                keys, back = None, cursor == "back from the third"
                if cursor:
                    items = (await run_lists.list_runs(db, f, ordering=ordering, limit=20,
                                                       offset=40 if back else 0)).items
                    row = items[0] if back else items[-1]
                    keys = run_lists.decode_cursor(
                        run_lists.encode_cursor(ordering, row, backward=back), ordering)
                sql, args = run_lists.build(f, ordering, 20, 0, keys, backward=back)
                plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))[0]
                found = _segment_problems(plan)
                if found:
                    problems[(name, ordering, cursor)] = found
    assert problems == {}
