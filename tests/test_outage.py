"""Database outages and slow queries: 503 envelopes within seconds, then recovery by itself.

The outage tests run the app against a private PostgreSQL cluster (tests/pgcluster.py) the
test stops, restarts on the same port, or freezes with SIGSTOP (TCP still accepts, nothing
answers: the case only timeouts can bound). The statement-timeout test needs no outage and
runs on the shared database.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from service.web.app import create_app
from service.config import Config
from service.app.positions import FEED_QUERIES
from service.infra.feedwait import FeedWaiters
from service.web.keys import FEED_WAITERS, METRICS, POOL
from service.store import meta
from tests import pgcluster
from tests.helpers import (RUNTIME_ROLE, SCHEMA, Api, as_runtime, lock_waiters, make_token,
                           wait_until)

# Small timeouts, so an outage answers fast. Budget per request: connect 1 s, acquire 2 s
# (connecting included), statement 0.8 s, and 1.8 s (asyncpg's command_timeout) for a pooled
# connection whose server does not answer at all. Without DB_CONNECT_TIMEOUT a token lookup
# waited asyncpg's default 60 s; without dropping the silent connection, ~3.6 s.
TIMEOUTS = dict(pool_min=1, pool_max=5, pool_acquire_timeout=2.0, db_connect_timeout=1.0,
                statement_timeout_ms=800)
MAX_503_SECONDS = 10.0  # far under asyncpg's 60 s defaults, with room for a loaded machine
SLOW_STATEMENT_MS = 1500  # the lock test: long enough to show the other requests pass by


@pytest.fixture
def config(db_dsn) -> Config:
    # The token cache is long so the handler's own database path is exercised while the
    # database is down; a fresh token exercises the token lookup.
    return Config(database_url=as_runtime(db_dsn), token_cache_seconds=60,
                  **{**TIMEOUTS, "statement_timeout_ms": SLOW_STATEMENT_MS})


async def timed(coro) -> tuple[object, float]:
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


async def wait_until_ready(api, seconds: float = 15) -> float:
    """Seconds until /health/ready answers 200 (polling every 0.1 s)."""
    async def ready() -> bool:
        resp = await api.client.get("/health/ready")
        await resp.read()
        assert resp.status in (200, 503), resp.status
        return resp.status == 200

    started = time.monotonic()
    await wait_until(ready, seconds, what="/health/ready to answer 200")
    return time.monotonic() - started


def run_path(run: dict) -> str:
    return f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"


async def test_a_busy_pool_answers_503_within_the_acquire_timeout_then_serves(
        aiohttp_client, db_dsn, db, token):
    # Every pooled connection held (by a test, as by long requests): a request waits
    # DB_ACQUIRE_TIMEOUT for one, then answers 503; once one is free it is served again.
    config = Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=1,
                    pool_acquire_timeout=0.5,
                    token_cache_seconds=60)
    api = Api(await aiohttp_client(create_app(config)), token)
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    pool = api.client.app[POOL]
    held = await pool.acquire()
    try:
        for method, path, body in (("GET", run_path(run), None),
                                   ("PUT", run_path(run), {"status": "running"}),
                                   ("GET", "/runs/", None)):
            content, seconds = await timed(api.call(method, path, 503, json=body))
            assert content == {} and 0.4 < seconds < MAX_503_SECONDS, (method, path, seconds)
    finally:
        await pool.release(held)
    assert (await api.get(run_path(run)))["status"] == "pending"  # the PUT changed nothing
    assert (await api.move(run, "running"))["version"] == 2
    assert await db.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", run["id"]) == 2


async def test_slow_query_answers_503_and_the_worker_is_free(api, db, db_dsn):
    """A run row locked by someone else: the PUT waits at most statement_timeout, then 503."""
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    # Status changes of one enterprise may share a transaction (groupcommit.py), so the
    # concurrent change below is another enterprise's.
    elsewhere = api.with_token(await make_token(db, f"ent-{uuid.uuid4().hex[:12]}"))
    other = await elsewhere.run((await elsewhere.pipeline())["id"])
    locker = await asyncpg.connect(db_dsn)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM pipeline_runs WHERE id = $1 FOR UPDATE",
                             uuid.UUID(run["id"]))
        blocked = asyncio.create_task(timed(api.put(run_path(run), {"status": "running"}, 503)))
        await wait_until(lambda: lock_waiters(locker), what="the PUT to wait for the row")
        # While one request waits on the lock, others are served.
        moved, created, read = await asyncio.gather(
            elsewhere.put(run_path(other), {"status": "running"}), api.run(pipeline["id"]),
            api.get(run_path(run)))
        assert moved["status"] == "running" and created["run_number"] == 2
        assert read["version"] == 1 and not blocked.done()
        _, waited = await blocked
        print(f"PUT on a locked row: 503 after {waited:.3f}s")
        assert SLOW_STATEMENT_MS / 1000 - 0.1 <= waited < SLOW_STATEMENT_MS / 1000 + 1, waited
        await lock.rollback()
    finally:
        await locker.close()
    moved = await api.put(run_path(run), {"status": "running"})
    assert moved["version"] == 2  # the cancelled PUT wrote nothing
    history = await api.get(run_path(run) + "events/")
    assert [e["version"] for e in history["results"]] == [1, 2]


@pytest.fixture(scope="module")
def cluster(missing_tool):
    reason = pgcluster.available()
    if reason is not None:
        missing_tool(reason)
    pg = pgcluster.PrivatePostgres()
    try:
        pg.start()

        async def load_schema():
            conn = await asyncpg.connect(pg.dsn)
            try:
                await meta.migrate(conn, SCHEMA, runtime=RUNTIME_ROLE)
            finally:
                await conn.close()

        asyncio.run(load_schema())
        yield pg
    finally:
        pg.destroy()


class TestPrivateCluster:
    @pytest.fixture
    def pg(self, cluster):
        yield cluster
        try:  # leave it running for the next test
            cluster.thaw()
        except Exception:
            pass
        if not (cluster.data / "postmaster.pid").exists():
            cluster.start()

    @pytest.fixture
    def db_dsn(self, pg):
        return pg.dsn

    @pytest.fixture
    def config(self, db_dsn) -> Config:
        return Config(database_url=as_runtime(db_dsn), token_cache_seconds=60,
                      timeout_sweep_seconds=0.3,
                      **TIMEOUTS)

    async def test_outage_answers_503_then_recovers_by_itself(self, api, pg, db, enterprise,
                                                              client):
        swept = await api.pipeline("swept", timeout_seconds=2)
        doomed = await api.move(await api.run(swept["id"]), "running")  # overdue in 2 s
        pipeline = await api.pipeline()
        run = await api.run(pipeline["id"])
        fresh = api.with_token(await make_token(db, enterprise, "fresh"))  # not cached yet
        due = time.monotonic() + 2

        # A request in flight when the server shuts down: blocked on a row lock, then the
        # administrator's shutdown ends its session. It answers 503 at once.
        await db.execute("BEGIN")
        locked = await db.fetchval("SELECT id FROM pipeline_runs WHERE id = $1 FOR UPDATE",
                                   uuid.UUID(run["id"]))
        assert str(locked) == run["id"]
        in_flight = asyncio.create_task(api.put(run_path(run), {"status": "running"}, 503))
        # And a long-poll waiting for events: its next re-query (every second) answers 503.
        waiting = asyncio.create_task(timed(api.get(f"/events/?run_id={run['id']}&after="
                                                    f"{2**62}&wait=10", 503)))
        waiters = client.server.app[FEED_WAITERS]
        await wait_until(lambda: lock_waiters(db), what="the PUT to wait for the row")
        await wait_until(lambda: waiters.waiting(enterprise), what="the long-poll to wait")
        stopped = time.monotonic()
        pg.stop()
        _, took = await timed(in_flight)
        assert took < 5, took
        await waiting
        # A tick (1 s), pg_ctl stop, the re-query: not the poll's 10 s wait.
        assert time.monotonic() - stopped < 8

        down = {
            "get": api.get(run_path(run), 503),
            "list": api.get(f"/pipelines/{pipeline['id']}/runs/", 503),
            "create": api.post(f"/pipelines/{pipeline['id']}/runs/", {}, 503),
            "keyed create": api.post(f"/pipelines/{pipeline['id']}/runs/", {}, 503,
                                     headers={"Idempotency-Key": "outage-1"}),
            "put": api.put(run_path(run), {"status": "running"}, 503),
            "feed": api.get("/events/?wait=2", 503),
            "token lookup": fresh.get(run_path(run), 503),
            "ready": api.get("/health/ready", 503),
        }
        took = {name: (await timed(call))[1] for name, call in down.items()}
        print("503 while stopped (s):", {k: round(v, 3) for k, v in took.items()})
        assert max(took.values()) < 5, took  # refused: nothing to wait for
        assert (await api.get("/health/live"))["status"] == "live"

        # Down past the doomed run's deadline, while sweeps fail.
        metrics = client.server.app[METRICS]
        await wait_until(lambda: metrics.sweep_failures and time.monotonic() > due + 0.5,
                         what="a failed sweep after the run's deadline")
        pg.start()
        recovered = await wait_until_ready(api)
        print(f"ready {recovered:.3f}s after the restart")
        assert recovered < 10, recovered

        # Served again, with the same pool, listener and sweeper.
        assert (await fresh.get(run_path(run)))["version"] == 1  # nothing half-written
        await api.move(run, "running")

        async def doomed_timed_out() -> bool:
            return (await api.get(run_path(doomed)))["status"] == "timeout"

        await wait_until(doomed_timed_out, 5, "the sweeper to come back")
        await self._long_poll_wakes(api, client, run)

    async def _long_poll_wakes(self, api, client, run) -> None:
        after = (await api.get(f"/events/?run_id={run['id']}"))["next_after"]
        poll = asyncio.create_task(api.get(f"/events/?run_id={run['id']}&after={after}&wait=5"))
        waiters = client.server.app[FEED_WAITERS]
        await wait_until(lambda: waiters.waiting(run["enterprise_id"]), what="the long-poll")
        assert not poll.done()
        started = time.monotonic()
        await api.move(run, "waiting")
        woke = await poll
        latency = time.monotonic() - started
        print(f"long-poll woke {latency:.3f}s after the commit")
        assert [e["to_status"] for e in woke["results"]] == ["waiting"]
        assert latency < 4  # woken, not its 5 s wait
        # LISTEN is re-established in the background.
        await wait_until(lambda: waiters.listening, 3, "the feed listener to reconnect")

    async def test_unresponsive_database_answers_503_within_the_timeouts(self, api, pg, db,
                                                                          enterprise):
        pipeline = await api.pipeline()
        run = await api.run(pipeline["id"])
        tokens = [api.with_token(await make_token(db, enterprise, f"t{i}")) for i in range(2)]
        await db.close()  # it would be frozen too

        # 1. Pooled connections whose server stopped answering: statement/command timeouts.
        pg.freeze()
        try:
            took = await self._all_503(api, tokens[0], pipeline, run)
        finally:
            pg.thaw()
        print("503 while frozen, pooled connections (s):", took)
        assert max(took.values()) < MAX_503_SECONDS, took
        await wait_until_ready(api)

        # 2. No usable pooled connection and a server that accepts TCP but never answers the
        # startup message: the connect timeout (asyncpg's default is 60 s).
        pg.stop()
        pg.start()
        pg.freeze()
        try:
            took = await self._all_503(api, tokens[1], pipeline, run)
            await self._listener_reconnects_in_the_background(pg.dsn)
        finally:
            pg.thaw()
        print("503 while frozen, connecting (s):", took)
        assert max(took.values()) < MAX_503_SECONDS, took
        recovered = await wait_until_ready(api)
        print(f"ready {recovered:.3f}s after the thaw")
        assert recovered < 10, recovered
        assert (await api.move(run, "running"))["version"] == 2

    async def _listener_reconnects_in_the_background(self, dsn: str) -> None:
        """A long-poll's wait never waits on the feed listener's (re)connect."""
        waiters = FeedWaiters(dsn, FEED_QUERIES, connect_timeout=10)
        with waiters.subscribe("nobody") as event:
            _, took = await timed(waiters.wait(event, 0.3))
        assert took < 3, took  # not the listener's 10 s connect
        assert not waiters.listening
        _, took = await timed(waiters.stop())  # and stopping does not wait on it either
        assert took < 3, took  # not the listener's 10 s connect

    async def _all_503(self, api, fresh, pipeline, run) -> dict[str, float]:
        calls = {
            "token lookup": fresh.get(run_path(run), 503),
            "get": api.get(run_path(run), 503),
            "put": api.put(run_path(run), {"status": "running"}, 503),
            "feed": api.get("/events/?wait=1", 503),
            "ready": api.get("/health/ready", 503),
        }
        names = list(calls)
        results = await asyncio.gather(*(timed(c) for c in calls.values()))
        _, live_took = await timed(api.get("/health/live"))
        assert live_took < 3
        return {name: round(took, 3) for name, (_, took) in zip(names, results)}
