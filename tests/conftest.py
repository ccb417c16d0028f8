"""Shared fixtures: a real PostgreSQL, the schema in a template database, an app client.

Isolation: most tests share one session database and isolate themselves by tenancy (every
test gets its own enterprise and token). Tests that need a whole database of their own
(replay/verify over everything, races with real commits) use `own_db`, a clone of the
template made with CREATE DATABASE ... TEMPLATE.
"""
from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest

from service.config import Config
from service.store import meta
from service.web.app import create_app
from tests.dsn import resolve_admin_dsn
from tests.helpers import SCHEMA, Api, admin, dsn_for, make_token

# A skip is not a pass: in CI (CI=true) a test whose tool is missing fails the run.
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="session")
def missing_tool():
    """Call it with why a required tool is missing: a skip here, a failure in CI."""
    def missing(reason: str):
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: a missing tool fails the run)", pytrace=False)
        pytest.skip(reason)
    return missing


@pytest.fixture(scope="session")
def admin_dsn():
    dsn, stop = resolve_admin_dsn()
    yield dsn
    if stop is not None:
        stop()


@pytest.fixture(scope="session")
def template_db(admin_dsn):
    """The schema, loaded once into a template database."""
    name = f"pr_template_{uuid.uuid4().hex[:8]}"

    async def create():
        await admin(admin_dsn, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(dsn_for(admin_dsn, name))
        try:
            await meta.migrate(conn, SCHEMA)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _clone(admin_dsn: str, template: str) -> str:
    name = f"pr_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return name


@pytest.fixture(scope="session")
def shared_db(admin_dsn, template_db):
    name = _clone(admin_dsn, template_db)
    yield dsn_for(admin_dsn, name)
    asyncio.run(admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def own_db(admin_dsn, template_db):
    """A database of this test's own, cloned from the template."""
    name = _clone(admin_dsn, template_db)
    yield dsn_for(admin_dsn, name)
    asyncio.run(admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_dsn(request, shared_db):
    """The database the app under test uses: the shared one, or a clone of its own for a test
    marked `own_db` (it tampers with, or verifies, the whole database); override where needed."""
    if request.node.get_closest_marker("own_db"):
        return request.getfixturevalue("own_db")
    return shared_db


@pytest.fixture
def config(db_dsn) -> Config:
    return Config(database_url=db_dsn, pool_min=1, pool_max=20, token_cache_seconds=0.5)


@pytest.fixture
async def db(db_dsn):
    """A direct connection to the app's database, for setup and for checking what was stored."""
    conn = await asyncpg.connect(db_dsn)
    from service.infra.db import init_connection

    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture
def enterprise() -> str:
    return f"ent-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def token(db, enterprise) -> str:
    return await make_token(db, enterprise)


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(create_app(config))


@pytest.fixture
def api(client, token) -> Api:
    return Api(client, token)


@pytest.fixture(scope="session")
def replica_pair(missing_tool):
    """A private primary and its hot standby (tests/pgcluster.py), made once per session:
    (primary DSN, standby DSN) of a database holding the schema. The replica tests share it
    and isolate themselves by enterprise, as the other tests do."""
    from tests import pgcluster

    reason = pgcluster.available()
    if reason is not None:
        missing_tool(reason)
    primary = pgcluster.PrivatePostgres()
    standby = None
    try:
        primary.start()
        asyncio.run(admin(primary.dsn, 'CREATE DATABASE "pr"'))
        asyncio.run(_load_schema(primary.dsn_for("pr")))
        standby = pgcluster.PrivatePostgres(standby_of=primary)
        standby.start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


async def _load_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await meta.migrate(conn, SCHEMA)
    finally:
        await conn.close()
