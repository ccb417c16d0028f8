"""run_events is partitioned by month with partitions made ahead; every partition is
append-only; history, as_of, the feed and verify read one run's events across months."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from service.app.replay import verify
from service.store import partitions


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


@pytest.mark.own_db
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


@pytest.mark.own_db
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
