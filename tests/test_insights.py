"""Insights: every figure against an independent computation over the same runs (the runs
table, or the events folded here), for several windows, granularities and groupings and an
as_of; replay rebuilds run_insights exactly, verify names a tampered row; bad parameters
are 400 envelopes."""
from __future__ import annotations

import math
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from service.app.replay import replay, verify
from service.app.seed import seed
from service.domain import lifecycle
from tests.helpers import Api, iso, make_token

ERR = 0.01
OUTCOMES = ("success", "failure", "timeout", "invalid", "cancelled")
NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@pytest.fixture
def db_dsn(own_db):
    return own_db


@pytest.fixture
async def seeded(db, client):
    await seed(db, "ins", pipelines=4, runs=400, days=90, seed=5, batch=128)
    return Api(client, await make_token(db, "ins"))


def _bucket(at: datetime, granularity: str | None, frm: datetime) -> datetime:
    at = at.astimezone(timezone.utc)
    if granularity is None:
        return frm
    if granularity == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _expected(runs: list[dict], frm, to, granularity, group) -> dict:
    """Plain counts and sorted values per (bucket, pipeline) over the runs' states."""
    rows: dict = defaultdict(lambda: {"created": 0, **{o: 0 for o in OUTCOMES},
                                      "duration": [], "queue": [], "recoveries": []})

    def row(at, run):
        return rows[(_bucket(at, granularity, frm), run["pipeline_id"] if group else None)]

    def inside(at):
        return at is not None and frm <= at < to

    for r in runs:
        if inside(r["created_at"]):
            row(r["created_at"], r)["created"] += 1
        if r["status"] in OUTCOMES and inside(r["ended_at"]):
            row(r["ended_at"], r)[r["status"]] += 1
            if r["started_at"] is not None:
                row(r["ended_at"], r)["duration"].append(
                    (r["ended_at"] - r["started_at"]).total_seconds())
        if inside(r["started_at"]):
            row(r["started_at"], r)["queue"].append(
                (r["started_at"] - r["created_at"]).total_seconds())
    by_pipeline = defaultdict(list)
    for r in runs:
        if r["status"] in ("success", "failure", "timeout"):
            by_pipeline[r["pipeline_id"]].append(r)
    for finished in by_pipeline.values():
        failing_since = None
        for r in sorted(finished, key=lambda r: (r["ended_at"], r["id"])):
            if r["status"] != "success":
                failing_since = failing_since or r["ended_at"]
            else:
                if failing_since is not None and inside(r["ended_at"]):
                    row(r["ended_at"], r)["recoveries"].append(
                        (r["ended_at"] - failing_since).total_seconds())
                failing_since = None
    return rows


def _close(answer, exact, err=ERR):
    assert answer is not None and abs(answer - exact) <= err * abs(exact) + 2e-6, (answer, exact)


def _check_row(got: dict, want: dict) -> None:
    assert got["created"] == want["created"]
    for o in OUTCOMES:
        assert got["finished"][o] == want[o], o
    assert got["finished"]["total"] == sum(want[o] for o in OUTCOMES)
    rated = want["success"] + want["failure"] + want["timeout"]
    assert got["success_rate"]["count"] == rated
    assert got["success_rate"]["value"] == (round(want["success"] / rated, 6) if rated else None)
    for name, values, qs in (("duration", want["duration"], (("p50", .5), ("p90", .9),
                                                              ("p95", .95), ("p99", .99))),
                             ("queue_time", want["queue"], (("p50", .5), ("p95", .95)))):
        fig, values = got[name], sorted(values)
        assert fig["count"] == len(values), name
        if not values:
            assert fig["p50"] is None
            continue
        for key, q in qs:  # the value of rank floor(q (n-1)), within the stated error
            _close(fig[key], values[math.floor(q * (len(values) - 1))])
        if name == "duration":
            _close(fig["min"], values[0])
            _close(fig["max"], values[-1])
            _close(fig["mean"], sum(values) / len(values))
    assert got["mttr"]["count"] == len(want["recoveries"])
    if want["recoveries"]:
        _close(got["mttr"]["mean"], sum(want["recoveries"]) / len(want["recoveries"]), 1e-9)


async def _states_now(db) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT id, pipeline_id, status, created_at, started_at, ended_at FROM pipeline_runs "
        "WHERE enterprise_id = 'ins'")]


async def _states_as_of(db, as_of) -> list[dict]:
    """The events up to as_of, folded here with the lifecycle's fold."""
    events = await db.fetch("SELECT * FROM run_events WHERE enterprise_id = 'ins' "
                            "AND occurred_at <= $1 ORDER BY run_id, version", as_of)
    by_run = defaultdict(list)
    for e in events:
        by_run[e["run_id"]].append(dict(e))
    return [run for run in (lifecycle.fold(evs) for evs in by_run.values()) if run]


async def _compare(api, runs, query: str, frm, to, granularity, group) -> None:
    answer = await api.get(f"/insights/runs/?{query}")
    assert answer["relative_error"] == ERR
    assert (answer["from"], answer["to"]) == (frm.isoformat(), to.isoformat())
    want = _expected(runs, frm, to, granularity, group)
    got = {(datetime.fromisoformat(r["bucket_start"]),
            r.get("pipeline_id") and uuid.UUID(r["pipeline_id"])): r
           for r in answer["rows"]}
    want_keys = {(max(b, frm), p) for (b, p), w in want.items()}
    if not group and granularity is None:
        want_keys.add((frm, None))
    assert set(got) == want_keys
    for (bucket, pipeline), w in want.items():
        _check_row(got[(max(bucket, frm), pipeline)], w)


@pytest.mark.parametrize("days,granularity,group", [
    (30, "day", False), (90, None, True), (7, "hour", False), (60, "week", True),
    (90, "month", False), (366, None, False)])
async def test_figures_match_the_runs_table(seeded, db, days, granularity, group):
    frm, to = NOW - timedelta(days=days), NOW
    query = f"from={iso(frm)}&to={iso(to)}"
    query += f"&granularity={granularity}" if granularity else ""
    query += "&group_by=pipeline" if group else ""
    await _compare(seeded, await _states_now(db), query, frm, to, granularity, group)


async def test_as_of_matches_a_fold_of_the_events(seeded, db):
    as_of = NOW - timedelta(days=20, minutes=17)
    frm = NOW - timedelta(days=80)
    to = as_of.replace(minute=0) + timedelta(hours=1)
    runs = await _states_as_of(db, as_of)
    await _compare(seeded, runs, f"from={iso(frm)}&as_of={iso(as_of)}&granularity=week"
                   "&group_by=pipeline", frm, to, "week", True)


async def test_filters_and_the_pipeline_route(seeded, db):
    runs = await _states_now(db)
    pipeline = runs[0]["pipeline_id"]
    frm, to = NOW - timedelta(days=90), NOW
    mine = [r for r in runs if r["pipeline_id"] == pipeline]
    q = f"from={iso(frm)}&to={iso(to)}&granularity=day"
    await _compare(seeded, mine, f"{q}&pipeline_id={pipeline}", frm, to, "day", False)
    by_path = await seeded.get(f"/pipelines/{pipeline}/insights/?{q}")
    by_filter = await seeded.get(f"/insights/runs/?{q}&pipeline_id={pipeline}")
    assert by_path == by_filter
    name = await seeded.get(f"/pipelines/{pipeline}/")
    by_name = await seeded.get(f"/insights/runs/?{q}&pipeline_name={name['name']}")
    assert by_name == by_filter


async def test_the_projection_follows_live_writes(db, api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "queued", "running")
    other = await api.run(pipeline["id"])
    await api.move(other, "cancelled")
    answer = await api.get("/insights/runs/")
    row = answer["rows"][0]
    assert row["created"] == 2 and row["finished"]["cancelled"] == 1
    assert row["queue_time"]["count"] == 1 and row["duration"]["count"] == 0
    await api.delete(f"/pipelines/{pipeline['id']}/runs/{other['id']}/")
    row = (await api.get("/insights/runs/"))["rows"][0]
    assert row["created"] == 1 and row["finished"]["total"] == 0


@pytest.mark.parametrize("query,field", [
    ("granularity=year", "granularity"), ("group_by=stage", "group_by"),
    ("pipeline_id=nope", "pipeline_id"), ("from=yesterday", "from"),
    ("from=2026-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", "from"),
    ("from=2024-01-01T00:00:00Z&to=2025-06-01T00:00:00Z", "to")])
async def test_bad_parameters_are_400(api, query, field):
    content = await api.get(f"/insights/runs/?{query}", status=400)
    assert field in str(content)


async def test_a_grouped_answer_is_at_most_10000_rows(api):
    # Two pipelines by the hour over a year could be 17,568 rows: refused before any work,
    # naming the bound; by the day (732 rows) the same question is answered.
    for name in ("a", "b"):
        await api.pipeline(name=f"rows-{name}-{uuid.uuid4().hex[:6]}")
    year = "from=2025-06-01T00:00:00Z&to=2026-06-01T00:00:00Z&group_by=pipeline"
    content = await api.get(f"/insights/runs/?{year}&granularity=hour", status=400)
    assert content == {"granularity": ["at most 10,000 rows (buckets × pipelines)"]}
    assert "8,760 buckets × 2 pipelines = 17,520 rows" in (await api.last.json())["message"]
    assert (await api.get(f"/insights/runs/?{year}&granularity=day"))["rows"] == []


async def test_replay_rebuilds_and_verify_names_a_tampered_row(seeded, db):
    assert (await verify(db)).clean
    before = [tuple(r) for r in await db.fetch(
        "SELECT * FROM run_insights WHERE n <> 0 ORDER BY 1, 2, 3, 4, 5")]
    assert before
    key = before[len(before) // 2][:5]
    await db.execute("UPDATE run_insights SET n = n + 3 WHERE (enterprise_id, hour, "
                     "pipeline_id, metric, bin) = ($1, $2, $3, $4, $5)", *key)
    await db.execute("DELETE FROM run_insights WHERE (enterprise_id, hour, pipeline_id, metric,"
                     " bin) = ($1, $2, $3, $4, $5)", *before[0][:5])
    result = await verify(db)
    assert {d.key for d in result.insight_drifts} == {key, before[0][:5]}
    assert not result.clean
    report = await replay(db)
    assert report.insights_repaired == 2
    after = [tuple(r) for r in await db.fetch("SELECT * FROM run_insights ORDER BY 1, 2, 3, 4, 5")]
    assert after == before
    assert (await verify(db)).clean


async def test_replay_rebuilds_an_emptied_projection(seeded, db):
    before = await db.fetch("SELECT * FROM run_insights WHERE n <> 0 ORDER BY 1, 2, 3, 4, 5")
    await db.execute("TRUNCATE run_insights")
    assert len((await verify(db)).insight_drifts) == len(before)
    await replay(db)
    assert await db.fetch("SELECT * FROM run_insights ORDER BY 1, 2, 3, 4, 5") == before


async def test_the_client_asks_what_the_api_answers(seeded, client):
    from service.client import PipelineRunsClient

    pipelines = await seeded.get("/pipelines/?limit=2")
    ids = [p["id"] for p in pipelines["results"]]
    frm, to = NOW - timedelta(days=45), NOW
    q = f"from={iso(frm)}&to={iso(to)}&granularity=week&group_by=pipeline"
    want = await seeded.get(f"/insights/runs/?{q}&pipeline_id={ids[0]}&pipeline_id={ids[1]}")
    async with PipelineRunsClient(str(client.make_url("")), seeded.token) as pr:
        got = await pr.insights(start=frm, end=to, granularity="week", group_by="pipeline",
                                pipeline_ids=ids)
        one = await pr.insights(ids[0], start=frm, end=to)
    assert got == want and {r["pipeline_id"] for r in got["rows"]} == set(ids)
    assert one == await seeded.get(f"/pipelines/{ids[0]}/insights/?from={iso(frm)}&to={iso(to)}")


async def test_an_unknown_pipeline_is_404(api):
    content = await api.get(f"/pipelines/{uuid.uuid4()}/insights/", status=404)
    assert content == {} or isinstance(content, dict)
