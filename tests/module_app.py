"""One app per module for the big matrices: import these fixtures into a test module, with

    pytestmark = pytest.mark.asyncio(loop_scope="module")
    from tests.module_app import api, client, config, db, token  # noqa: F401

and its tests share one app, its pool and one owner connection (all on the module's event
loop), while each test still gets its own enterprise and token (conftest's `enterprise`),
so tests stay isolated by tenancy as they are with conftest's function-scoped app. Building
and tearing down an app was most of each small test's time.
"""
from __future__ import annotations

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from service.config import Config
from service.infra.db import init_connection
from service.web.app import create_app
from tests.helpers import Api, as_runtime, make_token


@pytest.fixture(scope="module")
def config(shared_db) -> Config:
    """As conftest's `config`: the shared database, connected as the runtime role."""
    return Config(database_url=as_runtime(shared_db), pool_min=1, pool_max=20,
                  token_cache_seconds=0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(config):
    async with TestClient(TestServer(create_app(config))) as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db(shared_db):
    """The owner's connection, for setup and for checking what was stored."""
    conn = await asyncpg.connect(shared_db)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest_asyncio.fixture(loop_scope="module")
async def token(request, db, enterprise) -> str:
    if request.node.get_closest_marker("own_db"):  # this app is on the shared database
        pytest.fail("own_db needs conftest's function-scoped app, not tests/module_app.py")
    return await make_token(db, enterprise)


@pytest.fixture
def api(client, token) -> Api:
    return Api(client, token)
