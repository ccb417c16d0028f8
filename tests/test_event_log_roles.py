"""The event log holds against the service's own login: as the runtime role, run_events can
be read and appended to and nothing else (no UPDATE/DELETE/TRUNCATE, no DDL, no trigger
switched off), while the service works as before; an owning login is reported."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from service.app.chain import verify_chains
from service.store import meta, partitions, roles
from service.web.keys import POOL
from tests.helpers import RUNTIME_ROLE, SCHEMA, admin, as_runtime, dsn_for, run_path
from tests.processes import ROOT, free_port, ready, wait_for

PART = "run_events_y2030m01"  # a partition made for the test (own_db)

# (statement, the error PostgreSQL answers, its message)
REFUSED = [
    ("UPDATE run_events SET actor = 'mallory'", asyncpg.InsufficientPrivilegeError,
     "permission denied for table run_events"),
    ("DELETE FROM run_events", asyncpg.InsufficientPrivilegeError,
     "permission denied for table run_events"),
    ("TRUNCATE run_events", asyncpg.InsufficientPrivilegeError,
     "permission denied for table run_events"),
    (f"TRUNCATE {PART}", asyncpg.InsufficientPrivilegeError,
     f"permission denied for table {PART}"),
    (f"DELETE FROM {PART}", asyncpg.InsufficientPrivilegeError,
     f"permission denied for table {PART}"),
    ("ALTER TABLE run_events DISABLE TRIGGER run_events_no_update_delete",
     asyncpg.InsufficientPrivilegeError, "must be owner of table run_events"),
    ("ALTER TABLE run_events DISABLE TRIGGER ALL",
     asyncpg.InsufficientPrivilegeError, "must be owner of table run_events"),
    (f"ALTER TABLE run_events DETACH PARTITION {PART}",
     asyncpg.InsufficientPrivilegeError, "must be owner of table run_events"),
    (f"DROP TABLE {PART}", asyncpg.InsufficientPrivilegeError, f"must be owner of table {PART}"),
    ("DROP TABLE run_events CASCADE", asyncpg.InsufficientPrivilegeError,
     "must be owner of table run_events"),
    ("SET session_replication_role = replica", asyncpg.InsufficientPrivilegeError,
     'permission denied to set parameter "session_replication_role"'),
    ("SET LOCAL session_replication_role = replica", asyncpg.InsufficientPrivilegeError,
     'permission denied to set parameter "session_replication_role"'),
    # the per-run version guard: a head deleted would let a run's version 1 be appended again
    ("DELETE FROM run_heads", asyncpg.InsufficientPrivilegeError,
     "permission denied for table run_heads"),
    # the hash chain's heads: moved by the SECURITY DEFINER chain triggers only
    ("UPDATE event_chain_heads SET chain_hash = sha256(chain_hash)",
     asyncpg.InsufficientPrivilegeError, "permission denied for table event_chain_heads"),
    ("DELETE FROM event_chain_heads", asyncpg.InsufficientPrivilegeError,
     "permission denied for table event_chain_heads"),
    ("INSERT INTO event_chain_heads VALUES ('forged', 1, 1, '\\x00')",
     asyncpg.InsufficientPrivilegeError, "permission denied for table event_chain_heads"),
    ("CREATE OR REPLACE FUNCTION run_events_refuse_change() RETURNS trigger LANGUAGE plpgsql "
     "AS $$ BEGIN RETURN OLD; END $$", asyncpg.InsufficientPrivilegeError,
     "permission denied for schema public"),
]


@pytest.fixture
async def runtime(own_db, db):
    """A runtime-role connection to a database holding a run's events and PART."""
    await db.execute("SELECT run_events_ensure_partitions('2030-01-01Z', '2030-01-01Z')")
    conn = await asyncpg.connect(as_runtime(own_db))
    yield conn
    await conn.close()


@pytest.mark.own_db
@pytest.mark.parametrize("statement, error, message", REFUSED,
                         ids=[s[:40] for s, _, _ in REFUSED])
async def test_the_runtime_role_cannot_change_the_event_log(api, db, runtime, statement,
                                                            error, message):
    await api.run((await api.pipeline())["id"])
    before = await db.fetch("SELECT * FROM run_events ORDER BY position")
    heads = await db.fetch("SELECT * FROM event_chain_heads ORDER BY enterprise_id")
    with pytest.raises(error, match=message):
        async with runtime.transaction():
            await runtime.execute(statement)
    assert await db.fetch("SELECT * FROM run_events ORDER BY position") == before != []
    assert await db.fetch("SELECT * FROM event_chain_heads ORDER BY enterprise_id") == heads
    assert await db.fetchval(f"SELECT to_regclass('{PART}') IS NOT NULL")


async def test_the_service_runs_as_the_runtime_role_and_appends(client, api, db, enterprise):
    run = await api.run((await api.pipeline())["id"])
    await api.put(run_path(run), {"status": "running"})
    async with client.app[POOL].acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == RUNTIME_ROLE.name
        assert await roles.unprotected_because(conn) is None
    assert [r["version"] for r in await db.fetch(
        "SELECT version FROM run_events WHERE enterprise_id = $1 ORDER BY version",
        enterprise)] == [1, 2]
    health = await client.get("/health/ready")
    assert health.status == 200
    assert (await health.json())["content"] == {"status": "ready", "event_log": "protected"}


@pytest.mark.own_db
async def test_the_runtime_role_still_chains_what_it_appends(api, db, runtime, enterprise):
    """The chain's triggers move the heads for it: a PUT (one event, the head's UPDATE) and
    a statement of several events (the statement trigger), and verify finds no break."""
    run = await api.run((await api.pipeline())["id"])
    await api.put(run_path(run), {"status": "running"})
    await runtime.execute(
        "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, actor,"
        " occurred_at) SELECT $1, gen_random_uuid(), gen_random_uuid(), 1, 'run.created',"
        " 'a', now() FROM generate_series(1, 3)", enterprise)
    head = await db.fetchrow("SELECT position, events, chain_hash FROM event_chain_heads"
                             " WHERE enterprise_id = $1", enterprise)
    last = await db.fetchrow("SELECT position, chain_hash FROM run_events"
                             " WHERE enterprise_id = $1 ORDER BY position DESC LIMIT 1",
                             enterprise)
    assert (head["position"], head["events"], head["chain_hash"]) == (
        last["position"], 5, last["chain_hash"])
    assert await verify_chains(runtime) == (1, [])


@pytest.mark.own_db
async def test_the_chain_settings_cannot_move_another_enterprises_head(api, db, runtime):
    """The trigger's transaction-local settings are anyone's to write: planted ones that
    would move a head (here another enterprise's, onto no event of it) are refused."""
    await api.run((await api.pipeline())["id"])
    victim = await db.fetchval("SELECT enterprise_id FROM event_chain_heads")
    heads = await db.fetch("SELECT * FROM event_chain_heads ORDER BY enterprise_id")
    with pytest.raises(asyncpg.InsufficientPrivilegeError,
                       match="a chain head set by hand is refused"):
        async with runtime.transaction():
            await runtime.execute(
                "SELECT set_config('pipeline_runs.chain_lagging', ARRAY[$1]::text, true),"
                " set_config('pipeline_runs.chain_' || md5($1), '999999:42:' || repeat('ab', 32),"
                " true)", victim)
            await runtime.execute(
                "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type,"
                " actor, occurred_at) VALUES ('mallory', gen_random_uuid(), gen_random_uuid(),"
                " 1, 'run.created', 'a', now())")
    assert await db.fetch("SELECT * FROM event_chain_heads ORDER BY enterprise_id") == heads


@pytest.mark.own_db
async def test_the_runtime_role_makes_partitions_it_does_not_own(runtime, db):
    made = await partitions.ensure_ahead(runtime, months=60)  # 5 years: new ones for sure
    assert made > 0
    owners = await db.fetch("""
        SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'run_events'::regclass""")
    assert [r["owner"] for r in owners] == [await db.fetchval("SELECT current_user")]


async def test_an_owner_login_is_reported_unprotected_by_readiness(aiohttp_client, config,
                                                                  db_dsn):
    from service.web.app import create_app

    client = await aiohttp_client(create_app(config.with_(database_url=db_dsn)))
    health = await client.get("/health/ready")
    assert health.status == 200
    assert (await health.json())["content"] == {
        "status": "ready", "event_log": "unprotected",
        "event_log_unprotected_because": "superuser"}


def _serve(dsn: str, port: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)], cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": dsn,
             "LOG_FORMAT": "text", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_serve_as_owner_warns_and_the_strict_setting_refuses(own_db):
    strict = _serve(own_db, free_port(), REQUIRE_PROTECTED_EVENT_LOG="true")
    _, err = strict.communicate(timeout=60)
    assert strict.returncode == 2
    assert err.strip().splitlines() == [
        "python -m service serve: DATABASE_URL's role is superuser: it could change the "
        "event log (REQUIRE_PROTECTED_EVENT_LOG=true)"]

    port = free_port()
    warned = _serve(own_db, port)
    try:
        assert wait_for(lambda: ready(port) or warned.poll() is not None)
    finally:
        warned.terminate()
        _, err = warned.communicate(timeout=30)
    assert "WARNING" in err and "the event log is unprotected" in err and "superuser" in err


def test_serve_as_the_runtime_role_passes_the_strict_setting(own_db):
    port = free_port()
    proc = _serve(as_runtime(own_db), port, REQUIRE_PROTECTED_EVENT_LOG="true")
    try:
        assert wait_for(lambda: ready(port) or proc.poll() is not None) and ready(port)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "unprotected" not in err


def test_migrate_creates_the_runtime_role_and_narrows_it_again(own_db):
    role = f"pr_test_rt_{uuid.uuid4().hex[:8]}"
    runtime_dsn = as_runtime(own_db).replace(RUNTIME_ROLE.name, role, 1)
    env = {**os.environ, "MIGRATE_DATABASE_URL": own_db, "DATABASE_URL": runtime_dsn}

    def migrate() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    async def check(widen: bool) -> dict:
        conn = await asyncpg.connect(own_db)
        try:
            if widen:  # an operator widened it by hand
                await conn.execute(f"ALTER ROLE {role} CREATEDB; "
                                   f"GRANT UPDATE, TRUNCATE ON run_events TO {role}")
                return {}
            return dict(await conn.fetchrow("""
                SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                       has_table_privilege($1, 'run_events', 'SELECT, INSERT') AS reads,
                       has_table_privilege($1, 'run_events', 'UPDATE, DELETE, TRUNCATE')
                           AS changes,
                       has_table_privilege($1, 'pipeline_runs', 'UPDATE') AS projections
                FROM pg_roles r WHERE r.rolname = $1""", role))
        finally:
            await conn.close()

    try:
        out = migrate()
        assert out.returncode == 0, out.stderr
        assert f"runtime role {role}: may read and append run_events" in out.stdout
        expected = {"rolsuper": False, "rolcreaterole": False, "rolcreatedb": False,
                    "rolcanlogin": True, "reads": True, "changes": False, "projections": True}
        assert asyncio.run(check(False)) == expected
        asyncio.run(check(True))
        assert migrate().returncode == 0
        assert asyncio.run(check(False)) == expected
    finally:
        asyncio.run(_drop_role(own_db, role))


async def _drop_role(dsn: str, role: str) -> None:
    await admin(dsn, f"DROP OWNED BY {role}", f"DROP ROLE IF EXISTS {role}")


async def test_migrations_of_many_databases_create_one_role_at_once(admin_dsn):
    """Role rows are cluster-wide: six databases migrating at once all end with the role."""
    role = roles.RuntimeRole(f"pr_test_rt_{uuid.uuid4().hex[:8]}", "secret")
    names = [f"pr_roles_{uuid.uuid4().hex[:8]}" for _ in range(6)]
    await asyncio.gather(*(admin(admin_dsn, f'CREATE DATABASE "{n}"') for n in names))
    conns = [await asyncpg.connect(dsn_for(admin_dsn, n)) for n in names]
    try:
        await asyncio.gather(*(meta.migrate(c, SCHEMA, runtime=role) for c in conns))
        for conn in conns:
            assert await conn.fetchval(
                "SELECT has_table_privilege($1, 'run_events', 'INSERT')", role.name)
    finally:
        for conn in conns:
            await conn.close()
        for n in names:
            await admin(admin_dsn, f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
        await admin(admin_dsn, f"DROP ROLE IF EXISTS {role.name}")


def test_the_runtime_role_alone_does_not_migrate_and_says_what_is_pending(own_db):
    async def forget_last() -> str:
        conn = await asyncpg.connect(own_db)
        try:
            return await conn.fetchval("DELETE FROM schema_migrations WHERE name = "
                                       "(SELECT max(name) FROM schema_migrations) RETURNING name")
        finally:
            await conn.close()

    name = asyncio.run(forget_last())
    proc = _serve(as_runtime(own_db), free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        f"python -m service serve: the schema needs {name} and {RUNTIME_ROLE.name} may not "
        f"apply them: run migrate with MIGRATE_DATABASE_URL first"]
