"""The seeder's per-batch statements probe the batch's runs by primary key, whatever plan
they get: from its sixth batch a prepared statement may run a generic plan, and the
generic plan of `r.id = ANY($2)` once compared every rated run of the enterprise with each
of the batch's ids (1-8 minutes a batch at 400,000 runs)."""
from __future__ import annotations

import json
import uuid

import pytest

from service.domain import lifecycle as lc
from service.store import insights

STATEMENTS = {"ADD_RUNS": insights.ADD_RUNS, "ADD_RECOVERIES": insights.ADD_RECOVERIES,
              "REBUILD_BATCH_TOTALS": insights.REBUILD_BATCH_TOTALS}


def _reads_of_runs(plan: dict) -> list[tuple[str, str]]:
    """(index or scan, condition) of every node of the plan reading pipeline_runs."""
    found = []

    def visit(node: dict) -> None:
        if node.get("Relation Name") == "pipeline_runs" or (
                node.get("Index Name") or "").startswith("pipeline_runs"):
            found.append((node.get("Index Name") or node["Node Type"],
                          " ".join(str(node.get(k, "")) for k in ("Index Cond", "Filter",
                                                                   "Recheck Cond"))))
        for child in node.get("Plans", ()):
            visit(child)

    visit(plan["Plan"])
    return found


@pytest.mark.own_db
@pytest.mark.parametrize("name", sorted(STATEMENTS))
async def test_batch_statements_probe_runs_by_primary_key_in_a_generic_plan(db, name):
    enterprise = "seedplans"
    pipeline_ids = [uuid.uuid4() for _ in range(20)]
    await db.executemany("INSERT INTO pipelines (enterprise_id, id, name) VALUES ($1, $2, $3)",
                         [(enterprise, p, f"p{i}") for i, p in enumerate(pipeline_ids)])
    await db.execute("BEGIN")
    await db.execute(insights.BULK_LOAD)
    await db.execute("""
        INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status,
            created_at, updated_at, started_at, ended_at, version, deadline)
        SELECT $1, gen_random_uuid(), ($2::uuid[])[1 + g % 20], g,
               ($3::text[])[1 + (g * 7) % 11], t, t, t, t, 1, t
        FROM generate_series(1, 20000) g, LATERAL (SELECT now() - g * interval '1 min' AS t) x
    """, enterprise, pipeline_ids, list(lc.RUN_STATUSES))
    await db.execute("COMMIT")
    await db.execute("ANALYZE")
    batch = [r[0] for r in await db.fetch(
        "SELECT id FROM pipeline_runs ORDER BY created_at DESC LIMIT 2000")]
    await db.execute("SET plan_cache_mode = force_generic_plan")
    plan = json.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) {STATEMENTS[name]}",
                                        enterprise, batch))[0]
    reads = _reads_of_runs(plan)
    assert any(index == "pipeline_runs_pkey" and "u.id" in cond for index, cond in reads), reads
    assert not any("ANY ($2)" in cond for _, cond in reads), reads
