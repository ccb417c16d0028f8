"""migrate: a database of the previous schema (tests/data/previous_schema.sql, schema.sql as
of f99745a) and one from before run_events was partitioned both end with the catalogue of
a fresh database; each migration runs once, in order, and a failed one changes nothing."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from service.store import meta
from tests.helpers import admin, dsn_for

PREVIOUS_SCHEMA = (Path(__file__).parent / "data" / "previous_schema.sql").read_text()
MIGRATIONS = [m.name for m in meta.load_migrations()]

# The catalogue of the public schema, as comparable rows (first item: the table, or the
# kind of object), each kind a set: what a database has, not the order it was built in.
CATALOGUE = {
    "tables": """
        SELECT c.relname, c.relkind::text, c.relispartition,
               pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid),
               (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                WHERE i.inhrelid = c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text,
               a.attcollation
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0
          AND NOT a.attisdropped""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid),
               k.condeferrable, k.condeferred
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal""",
    "functions": """
        SELECT 'function', p.proname, pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'""",
}


async def catalogue(conn: asyncpg.Connection, skip: set[str] = frozenset()) -> dict[str, set]:
    """Every kind's rows, without those of the tables in `skip`."""
    found = {}
    for kind, sql in CATALOGUE.items():
        found[kind] = {tuple(row) for row in await conn.fetch(sql) if row[0] not in skip}
    return found


@pytest.fixture
async def make_db(admin_dsn):
    """Empty databases of the test's own (dropped afterwards); returns a connection."""
    made: list[tuple[str, asyncpg.Connection]] = []

    async def make() -> asyncpg.Connection:
        name = f"pr_migrate_{uuid.uuid4().hex[:8]}"
        await admin(admin_dsn, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(dsn_for(admin_dsn, name))
        made.append((name, conn))
        return conn

    yield make
    for name, conn in made:
        await conn.close()
        await admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def fresh_catalogue(make_db, skip: set[str] = frozenset()) -> dict[str, set]:
    conn = await make_db()
    assert await meta.migrate(conn) == []  # fresh: schema.sql; nothing to convert
    assert await applied(conn) == MIGRATIONS
    return await catalogue(conn, skip)


async def applied(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY 1")]


def assert_same(migrated: dict[str, set], fresh: dict[str, set]) -> None:
    for kind in CATALOGUE:
        assert migrated[kind] - fresh[kind] == set(), f"{kind} only in the migrated database"
        assert fresh[kind] - migrated[kind] == set(), f"{kind} missing from the migrated one"


async def seed_events(conn: asyncpg.Connection, versions: int = 3) -> uuid.UUID:
    """One run's events, appended as the previous schema allowed (straight into run_events)."""
    run_id = uuid.uuid4()
    await conn.executemany(
        "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, actor,"
        " occurred_at) VALUES ('e', gen_random_uuid(), $1, $2, 'run.status_changed', 'a',"
        " now())", [(run_id, v) for v in range(1, versions + 1)])
    return run_id


async def test_the_previous_schema_migrates_to_the_catalogue_of_a_fresh_database(make_db):
    assert MIGRATIONS and MIGRATIONS == sorted(MIGRATIONS)
    old = await make_db()
    await old.execute(PREVIOUS_SCHEMA)
    run_id = await seed_events(old)
    assert await meta.migrate(old) == MIGRATIONS  # a database from before migrations: all
    assert await meta.migrate(old) == []  # each runs once
    assert await applied(old) == MIGRATIONS
    assert_same(await catalogue(old), await fresh_catalogue(make_db))
    # The backfill: the run's head is its last version, so the next append is the only one.
    assert await old.fetchval("SELECT version FROM run_heads WHERE run_id = $1", run_id) == 3
    with pytest.raises(asyncpg.UniqueViolationError):
        await old.execute("INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version,"
                          " type, actor, occurred_at) VALUES ('e', gen_random_uuid(), $1, 3,"
                          " 'run.status_changed', 'a', now())", run_id)


# run_events as it was before partitioning (the rest of the schema did not change shape).
LEGACY_RUN_EVENTS = """
DROP TABLE run_events;
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
CREATE OR REPLACE FUNCTION run_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'run_events is append-only: % refused', TG_OP; END $$;
CREATE TRIGGER run_events_no_update_delete BEFORE UPDATE OR DELETE ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_refuse_change();
CREATE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_events_refuse_change();
DROP TABLE run_counts;
DROP INDEX pipeline_runs_by_status;
CREATE INDEX pipeline_runs_newest ON pipeline_runs (enterprise_id, created_at DESC, id DESC);
"""


async def test_an_unpartitioned_run_events_is_converted_in_place(make_db):
    """An older database (run_events not partitioned, no run_counts, an index since
    replaced): every row and position kept, the sequence continues after them, the
    counters are backfilled, and the catalogue is a fresh database's."""
    conn = await make_db()
    await conn.execute(PREVIOUS_SCHEMA + LEGACY_RUN_EVENTS)
    await conn.execute("""
        INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                to_status, actor, occurred_at)
        SELECT 'e', '00000000-0000-0000-0000-000000000001', gen_random_uuid(), 1,
               'run.created', 'pending', 'a', now() - g * interval '20 days'
        FROM generate_series(0, 5) g""")
    await conn.execute("""
        INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status,
                                   created_at, updated_at, version, deadline)
        SELECT 'e', run_id, pipeline_id, row_number() OVER (ORDER BY position), 'pending',
               occurred_at, occurred_at, 1, occurred_at FROM run_events""")
    before = await conn.fetch("SELECT * FROM run_events ORDER BY position")
    assert await meta.migrate(conn) == MIGRATIONS
    assert await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE relname = 'run_events'") == "p"
    after = await conn.fetch("SELECT * FROM run_events ORDER BY position")
    # The same rows, now chained (0006_event_chain adds chain_hash).
    assert [{k: v for k, v in r.items() if k != "chain_hash"} for r in after] == [
        dict(r) for r in before]
    assert all(r["chain_hash"] for r in after)
    assert await conn.fetch("SELECT status, n FROM run_counts") == [("pending", 6)]
    position = await conn.fetchval("""
        INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,
                                to_status, actor, occurred_at)
        VALUES ('e', '00000000-0000-0000-0000-000000000001', gen_random_uuid(), 1,
                'run.created', 'pending', 'a', now()) RETURNING position""")
    assert position == before[-1]["position"] + 1
    for statement in ("DELETE FROM run_events", "TRUNCATE run_events"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    # The old rows' months are partitions a fresh database does not have; the rest is equal.
    old_months = {r["relname"] for r in await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'run_events'::regclass "
        "AND c.relname < 'run_events_' || to_char(now() AT TIME ZONE 'UTC', '\"y\"YYYY\"m\"MM')")}
    assert len(old_months) >= 3
    assert_same(await catalogue(conn, old_months), await fresh_catalogue(make_db))


async def test_a_failed_migration_changes_nothing(make_db, tmp_path):
    for path in meta.MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "9001_add_a_table.sql").write_text("CREATE TABLE added (x int);")
    (tmp_path / "9002_broken.sql").write_text("ALTER TABLE nowhere ADD COLUMN y int;")
    conn = await make_db()
    await conn.execute(PREVIOUS_SCHEMA)
    with pytest.raises(asyncpg.UndefinedTableError):
        await meta.migrate(conn, directory=tmp_path)
    assert await conn.fetchval("SELECT to_regclass('added')") is None
    assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    assert await conn.fetchval("SELECT to_regclass('run_heads')") is None
    (tmp_path / "9002_broken.sql").write_text("ALTER TABLE added ADD COLUMN y int;")
    assert await meta.migrate(conn, directory=tmp_path) == [*MIGRATIONS, "9001_add_a_table",
                                                             "9002_broken"]
    assert await meta.migrate(conn, directory=tmp_path) == []


async def test_processes_migrating_at_once_take_turns(make_db, admin_dsn):
    first = await make_db()
    await first.execute(PREVIOUS_SCHEMA)
    await seed_events(first)
    name = await first.fetchval("SELECT current_database()")
    others = [await asyncpg.connect(dsn_for(admin_dsn, name)) for _ in range(3)]
    try:
        ran = await asyncio.gather(*(meta.migrate(c) for c in [first, *others]))
    finally:
        for conn in others:
            await conn.close()
    assert sorted(ran, key=len) == [[], [], [], MIGRATIONS]
    assert await applied(first) == MIGRATIONS
