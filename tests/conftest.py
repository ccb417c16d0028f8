"""Shared fixtures: a real PostgreSQL, the schema in a template database, an app client.

Roles: the app under test (`config`) and the real processes (tests/processes.py) connect as
the runtime role, as production should; `db`, for setup and inspection, stays the owner.

Isolation: most tests share one session database and isolate themselves by tenancy (every
test gets its own enterprise and token). Tests that need a whole database of their own
(replay/verify over everything, races with real commits) use `own_db`, a clone of the
template made with CREATE DATABASE ... TEMPLATE.
"""
from __future__ import annotations

import asyncio
import os
import random
import uuid

import asyncpg
import hypothesis
import pytest

from service.config import Config
from service.store import meta
from service.web.app import create_app
from tests.dbpool import ClonePool
from tests.dsn import resolve_admin_dsn
from tests.helpers import RUNTIME_ROLE, SCHEMA, Api, admin, as_runtime, dsn_for, make_token

# A skip is not a pass: in CI (CI=true) a test whose tool is missing fails the run.
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
# One seed for the run's random choices (PYTEST_SEED=N repeats a run); each test seeds
# `random` from it and its own id, so a failure repeats whatever ran before it.
SEED = int(os.environ.get("PYTEST_SEED") or random.SystemRandom().randrange(10**6))
os.environ["PYTEST_SEED"] = str(SEED)  # xdist's workers inherit it: one seed for the run
# Hypothesis: the same examples on every CI run (a red CI run is repeatable), new ones locally.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis.settings.load_profile("ci" if IN_CI else "default")


def pytest_report_header(config):
    return f"random seed: PYTEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def _seeded_random(request):
    random.seed(f"{SEED}:{request.node.nodeid}")


# Modules whose asserts bound wall-clock time, or that start many processes: under xdist
# (make test: --dist loadgroup) they run one after another on one worker, beside the rest.
TIMING = {"test_outage", "test_crash", "test_feed_bounded", "test_fair_share", "test_events",
          "test_token_cli", "test_readme", "test_noisy_neighbour", "test_rate_limit",
          "test_rate_limit_workers", "test_workers", "test_dev_server", "test_bench_smoke",
          "test_webhooks_crash", "test_replicas", "test_slow_readers", "test_client_gone",
          "test_webhooks_fair", "test_pages_limits", "test_page_sessions"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """TIMING's modules as one unit of work, every other test on its own. (xdist 3.8's own
    loadgroup renames node ids, which pytest 9.2 no longer lets it do.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TimingTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.partition("::")[0].rpartition("/")[2].removesuffix(".py")
            return "timing" if module in TIMING else nodeid

    return TimingTogether(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        report.sections.append(("random seed", f"PYTEST_SEED={SEED} repeats this run"))
    return report


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


TEMPLATE_LOCK = 0x7072_7465  # an advisory-lock id of the tests' own ("prte")


@pytest.fixture(scope="session")
def template_db(admin_dsn):
    """The schema, loaded once into a template database, with the runtime role's grants."""
    name = f"pr_template_{uuid.uuid4().hex[:8]}"

    async def create():
        # xdist's workers make their templates one at a time: migrate may touch what the
        # whole cluster shares (roles), which concurrent sessions would race on.
        lock = await asyncpg.connect(admin_dsn)
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", TEMPLATE_LOCK)
            await admin(admin_dsn, f'CREATE DATABASE "{name}"')
            conn = await asyncpg.connect(dsn_for(admin_dsn, name))
            try:
                await meta.migrate(conn, SCHEMA, runtime=RUNTIME_ROLE)
            finally:
                await conn.close()
        finally:
            await lock.close()  # releases the lock

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


@pytest.fixture(scope="session")
def clones(admin_dsn, template_db):
    """Clones of the template made ahead of the tests that take them (tests/dbpool.py)."""
    pool = ClonePool(admin_dsn, template_db)
    yield pool
    pool.close()


@pytest.fixture
def own_db(admin_dsn, clones):
    """A database of this test's own, cloned from the template (dropped in the background)."""
    name = clones.take()
    yield dsn_for(admin_dsn, name)
    clones.drop(name)


@pytest.fixture
def db_dsn(request, shared_db):
    """The database the app under test uses: the shared one, or a clone of its own for a test
    marked `own_db` (it tampers with, or verifies, the whole database); override where needed."""
    if request.node.get_closest_marker("own_db"):
        return request.getfixturevalue("own_db")
    return shared_db


@pytest.fixture
def config(db_dsn) -> Config:
    return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=20,
                  token_cache_seconds=0.5)


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
        await meta.migrate(conn, SCHEMA, runtime=RUNTIME_ROLE)
    finally:
        await conn.close()
