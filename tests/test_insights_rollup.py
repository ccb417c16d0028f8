"""Insights' per-day rollup (the rows of pipeline 0…0): answers that read it leave out the
runs of soft-deleted pipelines like the hourly rows do; verify names a tampered rollup row
and replay puts it back."""
from __future__ import annotations

from datetime import timedelta

import pytest

from service.app.replay import replay, verify
from service.domain.insights import ALL_PIPELINES
from tests.helpers import iso
from tests.test_insights import NOW, _compare, _states_now, db_dsn, seeded  # noqa: F401


@pytest.mark.parametrize("days,granularity", [(30, "day"), (45, "week"), (100, None)])
async def test_the_rollup_leaves_out_soft_deleted_pipelines(seeded, db, days, granularity):
    runs = await _states_now(db)
    gone = runs[0]["pipeline_id"]
    await seeded.delete(f"/pipelines/{gone}/")
    frm, to = NOW - timedelta(days=days, hours=5), NOW  # ragged at both ends
    query = f"from={iso(frm)}&to={iso(to)}" + (f"&granularity={granularity}"
                                               if granularity else "")
    await _compare(seeded, [r for r in runs if r["pipeline_id"] != gone], query, frm, to,
                   granularity, False)


async def test_verify_names_a_tampered_rollup_row_and_replay_restores_it(seeded, db):
    row = await db.fetchrow("SELECT * FROM run_insights WHERE pipeline_id = $1 AND n > 1 "
                            "ORDER BY hour DESC LIMIT 1", ALL_PIPELINES)
    key = tuple(row)[:5]
    await db.execute("UPDATE run_insights SET n = n - 1 WHERE (enterprise_id, hour, "
                     "pipeline_id, metric, bin) = ($1, $2, $3, $4, $5)", *key)
    drifts = (await verify(db)).insight_drifts
    assert [(d.key, d.expected, d.actual) for d in drifts] == [(key, row["n"], row["n"] - 1)]
    await replay(db)
    assert await db.fetchval("SELECT n FROM run_insights WHERE (enterprise_id, hour, "
                             "pipeline_id, metric, bin) = ($1, $2, $3, $4, $5)", *key) == row["n"]
    assert (await verify(db)).clean
