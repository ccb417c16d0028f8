"""Scale features: run_counts, list indexes and plans, keyset cursors, date ranges,
partitioned run_events, and the catalogue invariant that keeps the schema Citus-ready."""
from __future__ import annotations

import asyncio
import base64
import json
import random
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import asyncpg
import pytest

from conftest import SCHEMA, _admin, dsn_for
from service.domain import lifecycle as lc
from service.web.schemas import ENTERPRISE_RUN_ORDERINGS, PIPELINE_RUN_ORDERINGS
from service.infra.db import init_connection
from service.domain.errors import Conflict, NotFound, PreconditionFailed
from service.app.replay import replay, verify
from service.store import meta, partitions, run_lists
from service.store import pipelines as pipeline_store
from service.app import runs as run_cases
from service.app import stage_runs as stage_run_cases
from service.app.context import Actor, OnConnection
from test_runs import run_in

COUNTER_MISMATCHES = """
SELECT coalesce(c.enterprise_id, r.enterprise_id) AS enterprise_id,
       coalesce(c.pipeline_id, r.pipeline_id) AS pipeline_id,
       coalesce(c.status, r.status) AS status, coalesce(c.n, 0) AS counted, coalesce(r.n, 0) AS rows
FROM run_counts c
FULL JOIN (SELECT enterprise_id, pipeline_id, status, count(*) AS n FROM pipeline_runs
           GROUP BY enterprise_id, pipeline_id, status) r
  ON (r.enterprise_id, r.pipeline_id, r.status) = (c.enterprise_id, c.pipeline_id, c.status)
WHERE coalesce(c.n, 0) <> coalesce(r.n, 0)
"""


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


# --- run_counts ----------------------------------------------------------------------------

async def test_counters_stay_exact_under_concurrent_writes_and_replay(own_db):
    """Writers race on the same runs and pipelines through every write path; the counters
    equal the projection afterwards, verify is clean, and replay leaves them exact."""
    enterprise = "counters"
    setup = await _connect(own_db)
    try:
        staged = await pipeline_store.create_pipeline(
            setup, enterprise, 1, {"name": "staged", "stages": [{"name": "a"}, {"name": "b"}]})
        bare = await pipeline_store.create_pipeline(setup, enterprise, 1, {"name": "bare"})
        pipelines = [staged["id"], staged["id"], bare["id"]]
        run_ids: list[tuple] = []

        async def writer(seed: int) -> None:
            rng = random.Random(seed)
            conn = await _connect(own_db)
            try:
                for _ in range(40):
                    action = rng.random()
                    try:
                        if action < 0.3 or not run_ids:
                            pipeline_id = rng.choice(pipelines)
                            run = await run_cases.create(OnConnection(conn), Actor(enterprise, "w", 1),
                                                         pipeline_id)
                            run_ids.append((pipeline_id, run["id"]))
                        elif action < 0.75:  # one-statement moves and cascading ones
                            pipeline_id, run_id = rng.choice(run_ids)
                            target = rng.choice(("queued", "running", "waiting", "running",
                                                 "complete", "cancelled", "timeout"))
                            await run_cases.change_status(OnConnection(conn), Actor(enterprise, "w", 1),
                                                          pipeline_id, run_id, target)
                        elif action < 0.93:  # stage runs: derived outcomes of the run
                            pipeline_id, run_id = rng.choice(run_ids)
                            run = await conn.fetchrow(
                                "SELECT id FROM stage_runs WHERE run_id = $1 ORDER BY ordinal "
                                "LIMIT 1 OFFSET $2", run_id, rng.randrange(2))
                            if run is not None:
                                await stage_run_cases.change_status(
                                    OnConnection(conn), Actor(enterprise, "w", 1), run_id,
                                    run["id"],
                                    rng.choice(("running", "complete", "success", "failure")))
                        else:
                            pipeline_id, run_id = rng.choice(run_ids)
                            await run_cases.delete(OnConnection(conn), Actor(enterprise, "w", 1),
                                                   pipeline_id, run_id)
                    except (Conflict, NotFound, PreconditionFailed):
                        pass
            finally:
                await conn.close()

        await asyncio.gather(*(writer(seed) for seed in range(8)))
        assert await setup.fetch(COUNTER_MISMATCHES) == []
        total = await setup.fetchval("SELECT sum(n) FROM run_counts WHERE enterprise_id = $1",
                                     enterprise)
        assert total == await setup.fetchval(
            "SELECT count(*) FROM pipeline_runs WHERE enterprise_id = $1", enterprise) > 0
        scan = await verify(setup)
        assert scan.clean, (scan.drifts, scan.counter_drifts, scan.version_drifts)
        report = await replay(setup)
        assert (report.repaired, report.counters_repaired) == (0, 0)
        assert await setup.fetch(COUNTER_MISMATCHES) == []
    finally:
        await setup.close()


def isolated(test):
    """The test tampers with the whole database (or verifies all of it): own_db for it."""
    test.own_db = True
    return test


@pytest.fixture
def db_dsn(request, shared_db):
    if getattr(request.function, "own_db", False):
        return request.getfixturevalue("own_db")
    return shared_db


@isolated
async def test_verify_reports_a_tampered_counter_and_replay_repairs_it(api, db, db_dsn):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    await api.run(pipeline["id"])
    await db.execute(
        "UPDATE run_counts SET n = n + 5 WHERE pipeline_id = $1 AND status = 'running'",
        uuid.UUID(pipeline["id"]))
    await db.execute("DELETE FROM run_counts WHERE pipeline_id = $1 AND status = 'pending'",
                     uuid.UUID(pipeline["id"]))
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/"))["count"] == 6  # what it says

    scan = await verify(db)
    assert scan.drifts == [] and not scan.clean
    assert sorted((c.key[2], c.expected, c.actual) for c in scan.counter_drifts) == [
        ("pending", 1, 0), ("running", 1, 6)]
    env = {"DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "service"]
    bad = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "DRIFT run_counts" in bad.stdout, bad.stdout + bad.stderr

    # Writes between the scan and the repair keep the counters' error as it was.
    await api.move(run, "waiting")
    report = await replay(db)
    assert (report.repaired, report.counters_repaired) == (0, 2)
    assert (await verify(db)).clean
    assert await db.fetch(COUNTER_MISMATCHES) == []
    assert (await api.get(f"/pipelines/{pipeline['id']}/runs/"))["count"] == 2


@isolated
async def test_replay_rebuilds_counters_and_projection_from_events_alone(api, db):
    pipeline = await api.pipeline()
    for status in ("pending", "running", "cancelled", "success"):
        await run_in(api, pipeline, status)
    before = await db.fetch("SELECT * FROM run_counts WHERE n <> 0 ORDER BY status")
    await db.execute("DELETE FROM stage_runs; DELETE FROM pipeline_runs; DELETE FROM run_counts")
    report = await replay(db)
    assert report.repaired == 4 and report.counters_repaired == 0  # deltas came with the rows
    assert await db.fetch("SELECT * FROM run_counts WHERE n <> 0 ORDER BY status") == before
    assert (await verify(db)).clean


@isolated
async def test_verify_flags_a_repeated_event_version(api, db, enterprise):
    pipeline = await api.pipeline()
    run = await api.move(await api.run(pipeline["id"]), "running")
    await db.execute(
        "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,"
        " to_status, actor, occurred_at) VALUES ($1, $2, $3, 2, 'run.status_changed', "
        "'pending', 'running', 'mallory', now())",
        enterprise, uuid.UUID(pipeline["id"]), uuid.UUID(run["id"]))
    scan = await verify(db)
    assert [str(k[1]) for k in scan.version_drifts] == [run["id"]]
    assert (await replay(db)).version_drifts == 1


async def test_counts_come_from_counters_and_hide_deleted_pipelines(api, db):
    kept = await api.pipeline("kept")
    doomed = await api.pipeline("doomed")
    for _ in range(3):
        await api.run(kept["id"])
    await run_in(api, kept, "running")
    await api.run(doomed["id"])
    await api.delete(f"/pipelines/{doomed['id']}/")
    assert (await api.get("/runs/"))["count"] == 4
    assert (await api.get("/runs/?status=running"))["count"] == 1
    assert (await api.get("/runs/?pipeline_name=kept&status=pending"))["count"] == 3
    assert (await api.get("/runs/?pipeline_name=doomed"))["count"] == 0
    listed = await api.get("/runs/?limit=1000")
    assert {r["pipeline_name"] for r in listed["results"]} == {"kept"}
    await api.get(f"/pipelines/{doomed['id']}/runs/", status=404)


# --- cursors -------------------------------------------------------------------------------

_RANK = lc.STATUS_RANK


def _expected(runs: list[dict], ordering: str | None) -> list[str]:
    """The ordering's definition, in Python."""
    def t(v):
        return datetime.fromisoformat(v)

    def nulls_last(rows, field, desc):
        present = sorted((r for r in rows if r[field] is not None),
                         key=lambda r: (t(r[field]), r["id"]), reverse=desc)
        absent = sorted((r for r in rows if r[field] is None), key=lambda r: r["id"],
                        reverse=desc)
        return present + absent

    key = (ordering or "").lstrip("-")
    desc = (ordering or "-").startswith("-")
    if key in ("started_at", "ended_at"):
        rows = nulls_last(runs, key, desc)
    elif key == "":
        rows = sorted(runs, key=lambda r: (t(r["created_at"]), r["id"]), reverse=True)
    elif key == "status":
        newest = sorted(runs, key=lambda r: (t(r["created_at"]), r["id"]), reverse=True)
        rows = sorted(newest, key=lambda r: _RANK[r["status"]], reverse=desc)  # stable
    elif key == "run_number":
        rows = sorted(runs, key=lambda r: (r["run_number"], t(r["created_at"]), r["id"]),
                      reverse=desc)
    else:
        rows = sorted(runs, key=lambda r: (r["pipeline_name"], r["run_number"], r["id"]),
                      reverse=desc)
    return [r["id"] for r in rows]


async def _cursor_walk(api, path: str, limit: int) -> list[str]:
    """Page by next_cursor from the first page; every id in the order served."""
    sep = "&" if "?" in path else "?"
    page = await api.get(f"{path}{sep}limit={limit}")
    seen = [r["id"] for r in page["results"]]
    first_count = page["count"]
    while page["next_cursor"] is not None:
        assert len(page["results"]) == limit and page["next"] is not None
        page = await api.get(f"{path}{sep}limit={limit}&cursor={page['next_cursor']}")
        assert page["previous"] is None and page["count"] == first_count
        if page["next_cursor"] is not None:  # cursor pages link by cursor
            assert "cursor=" in page["next"] and "offset=" not in page["next"], page["next"]
        seen += [r["id"] for r in page["results"]]
        assert len(seen) <= 1000
    assert page["next"] is None
    return seen


async def _cursor_world(api) -> dict:
    """Runs in every kind of state over pipelines with a shared name, plus a deleted one."""
    alpha = await api.pipeline("alpha")
    beta_1 = await api.pipeline("beta")
    beta_2 = await api.pipeline("beta", stages=("only",))
    empty = await api.pipeline("empty", stages=())  # its runs are invalid at once
    doomed = await api.pipeline("doomed")
    plan = [(alpha, "pending"), (beta_1, "running"), (alpha, "success"), (beta_2, "queued"),
            (alpha, "waiting"), (beta_1, "cancelled"), (beta_2, "running"), (alpha, "failure"),
            (beta_1, "pending"), (alpha, "complete"), (beta_2, "success"), (empty, "invalid"),
            (alpha, "running"), (beta_2, "pending"), (beta_1, "processing"), (alpha, "pending")]
    for pipeline, status in plan:
        if status == "invalid":
            await api.run(pipeline["id"])
        else:
            await run_in(api, pipeline, status)
    await api.run(doomed["id"])
    await api.delete(f"/pipelines/{doomed['id']}/")
    runs = (await api.get("/runs/?limit=1000"))["results"]
    assert len(runs) == len(plan)
    return {"alpha": alpha, "beta": beta_1, "runs": runs}


FILTERS = ["", "status=pending", "status=running", "pipeline_name=beta", "pipeline_name=nope"]


async def test_cursor_pages_visit_every_run_exactly_once_in_every_ordering(api):
    world = await _cursor_world(api)
    runs = world["runs"]
    for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]:
        for filters in FILTERS:
            query = "&".join(q for q in (filters, f"ordering={ordering}" if ordering else "") if q)
            path = "/runs/" + (f"?{query}" if query else "")
            selected = [r for r in runs if _matches(r, filters)]
            expected = _expected(selected, ordering)
            full = (await api.get(path + ("&" if query else "?") + "limit=1000"))["results"]
            assert [r["id"] for r in full] == expected, (ordering, filters)
            for limit in (1, 3):
                assert await _cursor_walk(api, path, limit) == expected, (ordering, filters, limit)
    alpha_runs = [r for r in runs if r["pipeline_id"] == world["alpha"]["id"]]
    for ordering in [None, *PIPELINE_RUN_ORDERINGS]:
        for filters in ("", "status=pending"):
            query = "&".join(q for q in (filters, f"ordering={ordering}" if ordering else "") if q)
            path = f"/pipelines/{world['alpha']['id']}/runs/" + (f"?{query}" if query else "")
            expected = _expected([r for r in alpha_runs if _matches(r, filters)], ordering)
            assert await _cursor_walk(api, path, 2) == expected, (ordering, filters)


@pytest.mark.parametrize("plan", ["range first", "segments"])
async def test_date_ranges_page_exactly_in_every_ordering_both_ways(api, monkeypatch, plan):
    # A dated list is read range-first when its range is narrow, by the ordering's segments
    # when wide: both must give exactly the order (and cursor walk) of the undated list.
    monkeypatch.setattr(run_lists, "RANGE_CAP", 10**6 if plan == "range first" else -1)
    world = await _cursor_world(api)
    runs = world["runs"]
    since = min(datetime.fromisoformat(r["created_at"]) for r in runs)
    dated = f"created_after={_iso(since)}&updated_before=9999-01-01T00:00:00Z"
    for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]:
        for filters in FILTERS:
            query = "&".join(q for q in (filters, dated, f"ordering={ordering}" if ordering
                                         else "") if q)
            expected = _expected([r for r in runs if _matches(r, filters)], ordering)
            page = await api.get(f"/runs/?{query}&limit=1000")
            assert [r["id"] for r in page["results"]] == expected, (ordering, filters)
            assert (page["count"], page["count_exact"]) == (len(expected), True)
            for limit in (1, 3):
                walked = await _cursor_walk(api, f"/runs/?{query}", limit)
                assert walked == expected, (ordering, filters, limit)
    alpha = world["alpha"]["id"]
    for ordering in [None, *PIPELINE_RUN_ORDERINGS]:
        query = dated + (f"&ordering={ordering}" if ordering else "")
        expected = _expected([r for r in runs if r["pipeline_id"] == alpha], ordering)
        assert await _cursor_walk(api, f"/pipelines/{alpha}/runs/?{query}", 2) == expected


def _matches(run: dict, filters: str) -> bool:
    if not filters:
        return True
    field, value = filters.split("=")
    return run[field] == value


async def test_cursor_and_offset_combine_and_offset_pages_carry_a_cursor(api):
    world = await _cursor_world(api)
    expected = _expected(world["runs"], "run_number")
    page = await api.get("/runs/?ordering=run_number&limit=4&offset=4")
    assert [r["id"] for r in page["results"]] == expected[4:8]
    assert "offset=8" in page["next"] and page["next_cursor"]
    after = await api.get(f"/runs/?ordering=run_number&limit=4&cursor={page['next_cursor']}")
    assert [r["id"] for r in after["results"]] == expected[8:12]
    skipped = await api.get(
        f"/runs/?ordering=run_number&limit=2&offset=3&cursor={page['next_cursor']}")
    assert [r["id"] for r in skipped["results"]] == expected[11:13]


async def test_cursor_pages_stay_exact_while_runs_are_added(api):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(5)]
    page = await api.get("/runs/?limit=2")
    for _ in range(3):  # newer runs sort before the cursor: never seen, nothing repeated
        await api.run(pipeline["id"])
    rest = await api.get(f"/runs/?limit=10&cursor={page['next_cursor']}")
    seen = [r["id"] for r in page["results"] + rest["results"]]
    assert seen == [r["id"] for r in reversed(runs)]
    assert rest["count"] == 8 and rest["next_cursor"] is None


def _b64(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("cursor", [
    "not base64 !", _b64(b"\xff\xfe"), _b64(b"[1, 2]"), _b64({"o": "", "k": []}),
    _b64({"o": "", "k": ["yesterday", str(uuid.uuid4())]}),
    _b64({"o": "", "k": ["2024-01-01T00:00:00", str(uuid.uuid4())]}),  # no offset
    _b64({"o": "", "k": ["2024-01-01T00:00:00+00:00", "nope"]}),
    _b64({"o": "", "k": ["2024-01-01T00:00:00+00:00", str(uuid.uuid4())], "x": 1}),
    _b64({"o": "run_number", "k": [1, "2024-01-01T00:00:00+00:00", str(uuid.uuid4())]}),
    "x" * 5000,
])
async def test_a_malformed_or_foreign_cursor_is_a_400_envelope(api, cursor):
    for path in ("/runs/", f"/pipelines/{uuid.uuid4()}/runs/"):
        content = await api.get(f"{path}?cursor={quote(cursor)}", status=400)
        assert list(content["errors"]) == ["cursor"]


@pytest.mark.parametrize("ordering,key", [
    ("status", ["paused", "2024-01-01T00:00:00+00:00", str(uuid.uuid4())]),
    ("run_number", [-1, "2024-01-01T00:00:00+00:00", str(uuid.uuid4())]),
    ("run_number", [True, "2024-01-01T00:00:00+00:00", str(uuid.uuid4())]),
    ("pipeline__name", [7, 1, str(uuid.uuid4())]),
    ("-started_at", [None, None]),
])
async def test_cursor_keys_are_typed_per_ordering(api, ordering, key):
    cursor = _b64({"o": ordering, "k": key})
    content = await api.get(f"/runs/?ordering={ordering}&cursor={cursor}", status=400)
    assert list(content["errors"]) == ["cursor"]


async def test_a_null_key_cursor_resumes_in_the_null_part(api):
    pipeline = await api.pipeline()
    started = [await run_in(api, pipeline, "running") for _ in range(2)]
    never = [await api.run(pipeline["id"]) for _ in range(3)]
    expected = _expected(started + never, "-started_at")
    assert await _cursor_walk(api, "/runs/?ordering=-started_at", 1) == expected
    tail = [r for r in never if r["id"] != min(r["id"] for r in never)]
    cursor = _b64({"o": "started_at", "k": [None, min(r["id"] for r in never)]})
    page = await api.get(f"/runs/?ordering=started_at&cursor={cursor}")
    assert [r["id"] for r in page["results"]] == sorted(r["id"] for r in tail)


# --- date ranges ---------------------------------------------------------------------------

def _iso(value: datetime) -> str:
    return quote(value.isoformat(), safe="")


async def test_date_ranges_filter_both_lists_half_open(api):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(6)]
    moved = await api.move(runs[1], "running")
    created = [datetime.fromisoformat(r["created_at"]) for r in runs]

    async def ids(query: str, path: str = "/runs/") -> tuple[int, list[str]]:
        page = await api.get(f"{path}?limit=1000&{query}")
        assert page["count_exact"] is True
        return page["count"], sorted(r["id"] for r in page["results"])

    count, got = await ids(f"created_after={_iso(created[2])}&created_before={_iso(created[4])}")
    assert (count, got) == (2, sorted(r["id"] for r in runs[2:4]))
    count, got = await ids(f"created_after={_iso(created[5])}",
                           f"/pipelines/{pipeline['id']}/runs/")
    assert (count, got) == (1, [runs[5]["id"]])
    count, got = await ids(f"created_before={_iso(created[0])}")
    assert count == 0 and got == []
    updated = datetime.fromisoformat(moved["updated_at"])
    count, got = await ids(f"updated_after={_iso(updated)}")
    assert (count, got) == (1, [runs[1]["id"]])
    count, got = await ids(f"updated_before={_iso(updated)}&status=pending")
    assert (count, got) == (5, sorted(r["id"] for r in runs if r["id"] != runs[1]["id"]))
    # In another offset: the same instant.
    other = created[2].astimezone(timezone(timedelta(hours=-5)))
    assert (await ids(f"created_after={_iso(other)}"))[0] == 4
    # With a cursor, every ordering.
    for ordering in ENTERPRISE_RUN_ORDERINGS:
        walked = await _cursor_walk(
            api, f"/runs/?ordering={ordering}&created_after={_iso(created[1])}", 2)
        assert sorted(walked) == sorted(r["id"] for r in runs[1:]), ordering


@pytest.mark.parametrize("value", ["yesterday", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z"])
@pytest.mark.parametrize("field", ["created_after", "created_before", "updated_after",
                                   "updated_before"])
async def test_date_ranges_need_rfc3339_instants(api, field, value):
    content = await api.get(f"/runs/?{field}={quote(value)}", status=400)
    assert list(content["errors"]) == [field]


async def test_date_filtered_counts_stop_at_the_cap(api, monkeypatch):
    monkeypatch.setattr(run_lists, "COUNT_CAP", 3)
    pipeline = await api.pipeline()
    for _ in range(5):
        await api.run(pipeline["id"])
    page = await api.get("/runs/?created_after=2000-01-01T00:00:00Z&limit=2")
    assert (page["count"], page["count_exact"]) == (3, False)
    assert page["next"] is not None  # links follow the rows, not the capped count
    walked = await _cursor_walk(api, "/runs/?created_after=2000-01-01T00:00:00Z", 2)
    assert len(walked) == 5
    page = await api.get("/runs/?limit=2")
    assert (page["count"], page["count_exact"]) == (5, True)


async def test_openapi_documents_cursor_dates_and_the_page(client):
    spec = await (await client.get("/api/docs/swagger.json")).json()
    for path in ("/pipelines/v0/runs/", "/pipelines/v0/pipelines/{pipeline_id}/runs/"):
        names = {p["name"] for p in spec["paths"][path]["get"]["parameters"]}
        assert {"cursor", "created_after", "created_before", "updated_after",
                "updated_before", "limit", "offset"} <= names, path
    page = spec["components"]["schemas"]["PipelineRunPage"]["properties"]
    assert {"count", "count_exact", "next", "previous", "next_cursor", "results"} <= set(page)


# --- plans ---------------------------------------------------------------------------------

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


@isolated
async def test_every_ordering_and_single_filter_reads_index_ranges(db):
    """A 20,000-run enterprise: the first page of every ordering x filter is index ranges
    merged, never a scan of the enterprise or a sort of a segment."""
    enterprise = "plans"
    pipeline_ids = [uuid.uuid4() for _ in range(12)]
    await db.executemany(
        "INSERT INTO pipelines (enterprise_id, id, name) VALUES ($1, $2, $3)",
        [(enterprise, p, f"p{i % 10}") for i, p in enumerate(pipeline_ids)])
    await db.execute("""
        INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status,
            created_at, updated_at, started_at, ended_at, version, deadline)
        SELECT $1, gen_random_uuid(), ($2::uuid[])[1 + g % 12], g,
               ($3::text[])[1 + (g * 7) % 11],
               t, t, CASE WHEN g % 3 > 0 THEN t END, CASE WHEN g % 4 = 0 THEN t END, 1, t
        FROM generate_series(1, 20000) g, LATERAL (SELECT now() - g * interval '1 min' AS t) x
    """, enterprise, pipeline_ids, list(lc.RUN_STATUSES))
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
            for cursor in (None, "second page"):
                keys = None
                if cursor:
                    row = (await run_lists.list_runs(db, f, ordering=ordering, limit=20,
                                                     offset=0)).items[-1]
                    keys = run_lists.decode_cursor(run_lists.encode_cursor(ordering, row),
                                                   ordering)
                sql, args = run_lists.build(f, ordering, 20, 0, keys)
                plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))[0]
                found = _segment_problems(plan)
                if found:
                    problems[(name, ordering, cursor)] = found
    assert problems == {}


# --- partitioned run_events ----------------------------------------------------------------

async def test_run_events_is_partitioned_by_month_with_partitions_ahead(db):
    kind = await db.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'run_events'")
    assert kind == "p"
    months = await db.fetch("""
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'run_events'::regclass""")
    names = {r["relname"] for r in months}
    now = datetime.now(timezone.utc)
    for ahead in range(4):
        month = (now.replace(day=1) + timedelta(days=32 * ahead)).replace(day=1)
        assert f"run_events_y{month:%Y}m{month:%m}" in names
    assert await partitions.ensure_ahead(db) == 0  # already there: nothing to do


@isolated
async def test_every_partition_refuses_update_delete_and_truncate(api, db, enterprise):
    made = await db.fetchval("SELECT run_events_ensure_partitions('2020-01-15Z', '2020-02-03Z')")
    assert made == 2
    assert await db.fetchval(
        "SELECT run_events_ensure_partitions('2020-01-01Z', '2020-02-29Z')") == 0
    pipeline = await api.pipeline()
    await api.run(pipeline["id"])
    await db.execute(  # an old event, in its month (appending is allowed)
        "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, to_status,"
        " actor, occurred_at) VALUES ($1, $2, $3, 1, 'run.created', 'pending', 'a', "
        "'2020-01-20Z')", enterprise, uuid.UUID(pipeline["id"]), uuid.uuid4())
    current = await db.fetchval(
        "SELECT tableoid::regclass::text FROM run_events WHERE enterprise_id = $1", enterprise)
    for table in (current, "run_events_y2020m01", "run_events"):
        for statement in (f"UPDATE {table} SET actor = 'mallory'",
                          f"DELETE FROM {table}", f"TRUNCATE {table}"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await db.execute(statement)
    # Moving a row to another month is an UPDATE too.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE run_events SET occurred_at = '2020-01-20Z'")
    assert await db.fetchval("SELECT count(*) FROM run_events WHERE enterprise_id = $1",
                             enterprise) == 2


@isolated
async def test_history_as_of_feed_and_replay_span_months(api, db, enterprise):
    """Events of one run in three months (an archived-style past and now): history, as_of,
    the feed (position order across partitions) and verify all read them as one log."""
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await db.execute("SELECT run_events_ensure_partitions('2021-01-01Z', '2021-03-01Z')")
    # A second run whose whole life happened in early 2021 (appended directly).
    old = uuid.uuid4()
    events = [(1, "run.created", None, "pending", "2021-01-10Z",
               {"run_number": 99, "timeout_seconds": 3600, "stage_runs": []}),
              (2, "run.status_changed", "pending", "cancelled", "2021-02-10Z", {}),
              (3, "run.deleted", "cancelled", None, "2021-03-10Z", {})]
    for version, kind, before, after, at, data in events:
        await db.execute(
            "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, "
            "from_status, to_status, actor, occurred_at, data) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, 'old', $8::text::timestamptz, $9)",
            enterprise, uuid.UUID(pipeline["id"]), old, version, kind, before, after, at, data)
    parts = await db.fetch("SELECT DISTINCT tableoid::regclass::text AS t FROM run_events "
                           "WHERE run_id = $1", old)
    assert len(parts) == 3
    history = await api.get(f"/pipelines/{pipeline['id']}/runs/{old}/events/")
    assert [e["version"] for e in history["results"]] == [1, 2, 3]
    as_of = await api.get(f"/pipelines/{pipeline['id']}/runs/{old}/?as_of=2021-02-15T00:00:00Z")
    assert as_of["status"] == "cancelled"
    feed = await api.get("/events/?limit=100")
    positions = [e["position"] for e in feed["results"]]
    assert positions == sorted(positions) and len(positions) == 4
    assert {e["run_id"] for e in feed["results"]} == {run["id"], str(old)}
    assert (await verify(db)).clean


# run_events as it was before partitioning (the rest of the schema did not change shape).
LEGACY_RUN_EVENTS = """
CREATE TABLE run_events (
    position      bigint      GENERATED ALWAYS AS IDENTITY,
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    enterprise_id text        NOT NULL,
    pipeline_id   uuid        NOT NULL,
    run_id        uuid        NOT NULL,
    version       integer     NOT NULL,
    type          text        NOT NULL,
    from_status   text,
    to_status     text,
    actor         text        NOT NULL,
    actor_id      bigint,
    occurred_at   timestamptz NOT NULL,
    data          jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (enterprise_id, position),
    UNIQUE (enterprise_id, run_id, version)
);
CREATE FUNCTION run_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'run_events is append-only: % refused', TG_OP; END $$;
CREATE TRIGGER run_events_no_update_delete BEFORE UPDATE OR DELETE ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_refuse_change();
CREATE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_events_refuse_change();
"""


async def test_an_unpartitioned_run_events_is_converted_in_place(admin_dsn):
    """The pre-partitioning schema with data: migrating keeps every row and position, the
    sequence continues after them, and the result is append-only and idempotent."""
    name = f"pr_convert_{uuid.uuid4().hex[:8]}"
    await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
    conn = await _connect(dsn_for(admin_dsn, name))
    try:
        await conn.execute(LEGACY_RUN_EVENTS)
        await conn.execute("""
            INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                    to_status, actor, occurred_at)
            SELECT 'e', '00000000-0000-0000-0000-000000000001', gen_random_uuid(), 1,
                   'run.created', 'pending', 'a', now() - g * interval '20 days'
            FROM generate_series(0, 5) g""")
        before = await conn.fetch("SELECT * FROM run_events ORDER BY position")
        await meta.migrate(conn, SCHEMA)
        await meta.migrate(conn, SCHEMA)  # idempotent
        assert await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE relname = 'run_events'") == "p"
        after = await conn.fetch("SELECT * FROM run_events ORDER BY position")
        assert [dict(r) for r in after] == [dict(r) for r in before]
        assert await conn.fetchval("SELECT to_regclass('run_events_unpartitioned')") is None
        position = await conn.fetchval("""
            INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                    to_status, actor, occurred_at)
            VALUES ('e', '00000000-0000-0000-0000-000000000001', gen_random_uuid(), 1,
                    'run.created', 'pending', 'a', now()) RETURNING position""")
        assert position == before[-1]["position"] + 1
        for statement in ("DELETE FROM run_events", "TRUNCATE run_events"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
        await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- Citus readiness -----------------------------------------------------------------------

# Reference tables (replicated whole, not distributed): documented in schema.sql.
REFERENCE_TABLES = {"api_tokens"}


async def test_every_unique_key_of_tenant_tables_includes_enterprise_id(db):
    rows = await db.fetch("""
        SELECT t.relname AS table_name, i.relname AS index_name,
               coalesce(bool_or(a.attname = 'enterprise_id'), false) AS has_enterprise
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = current_schema()
        LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey)
        WHERE x.indisunique AND t.relkind IN ('r', 'p')
        GROUP BY t.relname, i.relname""")
    tables = {r["table_name"] for r in rows}
    assert {"pipelines", "stages", "pipeline_runs", "stage_runs", "run_events",
            "run_counts"} <= tables
    offenders = [(r["table_name"], r["index_name"]) for r in rows
                 if r["table_name"] not in REFERENCE_TABLES and not r["has_enterprise"]]
    assert offenders == []
    every_table = {r["relname"] for r in await db.fetch(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND relkind IN ('r', 'p') AND NOT relispartition")}
    without_enterprise = {r["table_name"] for r in await db.fetch("""
        SELECT c.relname AS table_name FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
        WHERE c.relkind IN ('r', 'p') AND NOT EXISTS (
            SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
            AND a.attname = 'enterprise_id' AND NOT a.attisdropped)""")}
    assert without_enterprise & every_table == set()
    assert "create_distributed_table('run_events', 'enterprise_id'" in SCHEMA
    assert "create_reference_table('api_tokens')" in SCHEMA
