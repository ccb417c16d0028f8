"""Per-run versions are unique and gap-free, guaranteed by PostgreSQL (run_heads and the
append trigger in schema.sql), whatever the writer: a hand-written INSERT or COPY of a
duplicate version, a gap, or a second version 1 is refused and writes nothing; two racing
appends of one version let exactly one through."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import asyncpg
import pytest

from tests.helpers import events_of, lock_waiters, run_path, wait_until

APPEND = """
INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status,
                        to_status, actor, occurred_at)
VALUES ($1, $2, $3, $4, 'run.status_changed', 'running', 'waiting', 'mallory', now())"""


@pytest.fixture
async def run(api):
    """A run at version 2 (created, then running), made through the API."""
    pipeline = await api.pipeline()
    run = await api.move(await api.run(pipeline["id"]), "running")
    assert run["version"] == 2
    return run


def key(enterprise: str, run: dict) -> tuple:
    return enterprise, uuid.UUID(run["pipeline_id"]), uuid.UUID(run["id"])


@pytest.mark.parametrize("version", [1, 2, 4, 0, -1], ids=["second-1", "duplicate", "gap",
                                                           "zero", "negative"])
async def test_an_append_that_is_not_the_next_version_is_refused(api, db, enterprise, run,
                                                                 version):
    before = await events_of(db, run["id"])
    with pytest.raises(asyncpg.UniqueViolationError, match="not the next version"):
        await db.execute(APPEND, *key(enterprise, run), version)
    assert await events_of(db, run["id"]) == before
    # The run goes on: the service's next append is version 3.
    moved = await api.move(run, "waiting")
    assert moved["version"] == 3
    assert [e["version"] for e in await events_of(db, run["id"])] == [1, 2, 3]


async def test_a_copy_with_a_duplicate_version_is_refused_whole(db, enterprise, run):
    """COPY (the seeder's path) goes through the same guard: the whole batch is refused."""
    ent, pipeline_id, run_id = key(enterprise, run)
    fresh = uuid.uuid4()
    rows = [(ent, pipeline_id, fresh, 1, "run.created", "mallory"),
            (ent, pipeline_id, run_id, 2, "run.status_changed", "mallory")]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.copy_records_to_table(
            "run_events", records=[(*r, datetime.now(timezone.utc)) for r in rows],
            columns=("enterprise_id", "pipeline_id", "run_id", "version", "type", "actor",
                     "occurred_at"))
    assert await events_of(db, fresh) == []
    assert len(await events_of(db, run_id)) == 2


async def test_the_next_version_is_accepted_and_moves_the_head(db, enterprise, run):
    await db.execute(APPEND, *key(enterprise, run), 3)
    head = await db.fetchval("SELECT version FROM run_heads WHERE run_id = $1",
                             uuid.UUID(run["id"]))
    assert head == 3


async def test_two_racing_appends_of_one_version_let_one_through(db, db_dsn, enterprise, run):
    """The first holds its head row until it commits; the second waits for it (seen in
    pg_locks), then finds the head moved on and is refused."""
    first = await asyncpg.connect(db_dsn, server_settings={"application_name": "first"})
    second = await asyncpg.connect(db_dsn, server_settings={"application_name": "second"})
    try:
        tx = first.transaction()
        await tx.start()
        await first.execute(APPEND, *key(enterprise, run), 3)
        racing = asyncio.create_task(second.execute(APPEND, *key(enterprise, run), 3))
        await wait_until(lambda: lock_waiters(db, "second"), what="the second append to wait")
        assert not racing.done()
        await tx.commit()
        with pytest.raises(asyncpg.UniqueViolationError):
            await asyncio.wait_for(racing, 20)
    finally:
        await first.close()
        await second.close()
    assert [e["version"] for e in await events_of(db, run["id"])] == [1, 2, 3]


async def test_a_deleted_runs_versions_stay_guarded(api, db, enterprise, run):
    """The head outlives the run's projection row: its history cannot be rewritten either."""
    await api.delete(run_path(run))
    versions = [e["version"] for e in await events_of(db, run["id"])]
    for version in (1, versions[-1], versions[-1] + 2):
        with pytest.raises(asyncpg.UniqueViolationError):
            await db.execute(APPEND, *key(enterprise, run), version)
    assert [e["version"] for e in await events_of(db, run["id"])] == versions
