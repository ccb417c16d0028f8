"""Shared fixtures: a real PostgreSQL, the schema in a template database, an app client.

Isolation: most tests share one session database and isolate themselves by tenancy (every
test gets its own enterprise and token). Tests that need a whole database of their own
(replay/verify over everything, races with real commits) use `own_db`, a clone of the
template made with CREATE DATABASE ... TEMPLATE.
"""
from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from yarl import URL

sys.path.insert(0, str(Path(__file__).parent))

from dsn import resolve_admin_dsn  # noqa: E402

from service.web.app import create_app  # noqa: E402
from service.config import Config  # noqa: E402
from service.store import meta  # noqa: E402
from service.store import tokens as token_store  # noqa: E402

SCHEMA = (Path(__file__).resolve().parent.parent / "schema.sql").read_text()
MOUNTS = ("/pipelines/v0", "/api/pipelines/v0", "/v0")


def dsn_for(admin_dsn: str, dbname: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


async def _admin(admin_dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


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
        await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(dsn_for(admin_dsn, name))
        try:
            await meta.migrate(conn, SCHEMA)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _clone(admin_dsn: str, template: str) -> str:
    name = f"pr_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return name


@pytest.fixture(scope="session")
def shared_db(admin_dsn, template_db):
    name = _clone(admin_dsn, template_db)
    yield dsn_for(admin_dsn, name)
    asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def own_db(admin_dsn, template_db):
    """A database of this test's own, cloned from the template."""
    name = _clone(admin_dsn, template_db)
    yield dsn_for(admin_dsn, name)
    asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_dsn(shared_db):
    """The database the app under test uses; override with own_db where needed."""
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


async def make_token(db, enterprise: str, name: str = "tester",
                     scopes=token_store.DEFAULT_SCOPES) -> str:
    _, token = await token_store.create_token(db, enterprise, name, list(scopes))
    return token


@pytest.fixture
async def token(db, enterprise) -> str:
    return await make_token(db, enterprise)


class Api:
    """Calls the service and checks the envelope; returns `content`."""

    def __init__(self, client, token: str | None, mount: str = "/pipelines/v0"):
        self.client = client
        self.token = token
        self.mount = mount
        self.last = None  # the last aiohttp response, for headers

    def with_token(self, token: str | None) -> "Api":
        return Api(self.client, token, self.mount)

    def at(self, mount: str) -> "Api":
        return Api(self.client, self.token, mount)

    def url(self, path: str) -> str:
        if path.startswith("http"):
            # Absolute links from the service (next/previous) must point at this server.
            url = URL(path)
            assert (url.host, url.port) == (self.client.host, self.client.port), path
            return url.path_qs
        return path if path.startswith(("/health", "/api/docs")) else self.mount + path

    async def call(self, method: str, path: str, status: int = 200, *, json: Any = None,
                   headers: dict[str, str] | None = None, data: Any = None, **kwargs) -> Any:
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        resp = await self.client.request(method, self.url(path), json=json, data=data,
                                         headers=all_headers, **kwargs)
        self.last = resp
        text = await resp.text()
        allowed = status if isinstance(status, tuple) else (status,)  # a tuple: any of these
        assert resp.status in allowed, f"{method} {path}: {resp.status} != {status}: {text}"
        assert resp.content_type == "application/json", text
        body = await resp.json()
        assert set(body) == {"code", "message", "content"}, body
        assert body["code"] == resp.status, body
        assert isinstance(body["message"], str) and body["message"], body
        if resp.status >= 400:
            assert "Traceback" not in text and "asyncpg" not in text, text
        return body["content"]

    async def get(self, path, status=200, **kw):
        return await self.call("GET", path, status, **kw)

    async def post(self, path, json=None, status=200, **kw):
        return await self.call("POST", path, status, json=json, **kw)

    async def put(self, path, json=None, status=200, **kw):
        return await self.call("PUT", path, status, json=json, **kw)

    async def delete(self, path, status=200, **kw):
        return await self.call("DELETE", path, status, **kw)

    # Shortcuts for the common setup steps.
    async def pipeline(self, name: str = "deploy", stages=("build", "test"), **fields) -> dict:
        body = {"name": name, "stages": [{"name": s} for s in stages], **fields}
        return await self.post("/pipelines/", body)

    async def run(self, pipeline_id) -> dict:
        return await self.post(f"/pipelines/{pipeline_id}/runs/", {})

    async def move(self, run: dict, *statuses: str, status: int = 200) -> dict:
        for target in statuses:
            run = await self.put(f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/",
                                 {"status": target}, status=status)
        return run


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(create_app(config))


@pytest.fixture
def api(client, token) -> Api:
    return Api(client, token)


@pytest.fixture(scope="session")
def replica_pair():
    """A private primary and its hot standby (tests/pgcluster.py), made once per session:
    (primary DSN, standby DSN) of a database holding the schema. The replica tests share it
    and isolate themselves by enterprise, as the other tests do."""
    import pgcluster

    reason = pgcluster.available()
    if reason is not None:
        pytest.skip(reason)
    primary = pgcluster.PrivatePostgres()
    standby = None
    try:
        primary.start()
        asyncio.run(_admin(primary.dsn, 'CREATE DATABASE "pr"'))
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
