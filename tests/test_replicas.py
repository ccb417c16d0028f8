"""Read replicas against a real primary and a real hot standby (the session's replica_pair).

The standby is a `pg_basebackup -R` copy streaming from the primary (tests/pgcluster.py).
Tests pause its replay (pg_wal_replay_pause) to make it stale on purpose, and stop it to
make it fail; each puts it back as it found it.
"""
from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.client import PipelineRunsClient
from tests.helpers import as_runtime
from service.config import Config
from service.infra.replicas import parse_token, replica_name
from service.web.keys import FEED_WAITERS
from tests.helpers import wait_until

TOKEN = "Consistency-Token"
DEADLINE = 60.0  # generous: the machine is shared


@pytest.fixture
def db_dsn(replica_pair):
    return replica_pair[0].dsn_for("pr")


@pytest.fixture
def standby_dsn(replica_pair):
    return replica_pair[1].dsn_for("pr")


@pytest.fixture
def config(db_dsn, standby_dsn) -> Config:
    return Config(database_url=as_runtime(db_dsn), read_database_urls=(as_runtime(standby_dsn),),
                  pool_min=1, pool_max=10, token_cache_seconds=0.5, replica_probe_seconds=0.2,
                  metrics_on_api_port=True)  # routing() scrapes it beside the API


@pytest.fixture
async def standby(standby_dsn):
    """A direct connection to the standby, for pausing replay and checking its position."""
    conn = await asyncpg.connect(standby_dsn)
    yield conn
    if not conn.is_closed():
        await conn.close()


async def caught_up(db, standby) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    target = await db.fetchval("SELECT pg_current_wal_insert_lsn()")

    async def replayed():
        return await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target)

    await wait_until(replayed, DEADLINE, what="the standby to replay the primary's position")


@contextlib.asynccontextmanager
async def replay_paused(standby):
    await standby.execute("SELECT pg_wal_replay_pause()")
    try:
        await wait_until(lambda: standby.fetchval(
            "SELECT pg_get_wal_replay_pause_state() = 'paused'"), DEADLINE, what="replay to pause")
        yield
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")


async def routing(client) -> tuple[dict, dict]:
    """(reads by target label, fallbacks by reason) from /metrics."""
    resp = await client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    reads = {s.labels["target"] + ":" + s.labels["replica"]: s.value
             for s in families["pipeline_runs_db_reads"].samples if s.name.endswith("_total")}
    fallbacks = {s.labels["reason"]: s.value
                 for s in families["pipeline_runs_replica_fallbacks"].samples
                 if s.name.endswith("_total")}
    return reads, fallbacks


def replica_label(standby_dsn: str) -> str:
    return "replica:" + replica_name(standby_dsn)


async def test_a_read_with_the_writes_token_sees_it_while_replay_is_paused(
        api, client, db, standby, standby_dsn):
    run = await api.run((await api.pipeline())["id"])
    url = f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"
    await caught_up(db, standby)
    async with replay_paused(standby):
        await api.put(url, {"status": "running"})
        written = api.last.headers[TOKEN]

        fresh = await api.get(url, headers={TOKEN: written})
        assert fresh["status"] == "running"
        assert parse_token(api.last.headers[TOKEN]) >= parse_token(written)

        before, _ = await routing(client)
        stale = await api.get(url)  # no token: the paused standby answers, and says so
        assert stale["status"] == "pending"
        assert parse_token(api.last.headers[TOKEN]) < parse_token(written)
        after, fallbacks = await routing(client)
        label = replica_label(standby_dsn)
        assert after[label] == before.get(label, 0) + 1
        assert fallbacks["not_caught_up"] >= 1  # the tokened read waited, then went primary

    # Replaying again, the standby itself serves the tokened read.
    before, fallbacks_before = await routing(client)
    assert (await api.get(url, headers={TOKEN: written}))["status"] == "running"
    after, fallbacks_after = await routing(client)
    assert after[label] == before[label] + 1
    assert fallbacks_after == fallbacks_before


async def test_the_client_reads_its_own_writes_with_no_extra_code(
        api, client, db, standby, token):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await caught_up(db, standby)
    async with replay_paused(standby):
        async with PipelineRunsClient(str(client.make_url("")), token) as pr:
            await pr.update_status(pipeline["id"], run["id"], "running")
            assert (await pr.get_run(pipeline["id"], run["id"]))["status"] == "running"
            listed = [r async for r in pr.list_runs(pipeline["id"])]
            assert [r["status"] for r in listed] == ["running"]
            history = await pr.run_events(pipeline["id"], run["id"])
            assert [e["to_status"] for e in history][-1] == "running"
        # Without the token the same read is stale: the test above could fail.
        assert (await api.get(f"/pipelines/{pipeline['id']}/runs/{run['id']}/"))[
            "status"] == "pending"


async def test_bad_token_is_a_400_envelope(api):
    content = await api.get("/runs/", status=400, headers={TOKEN: "0/16B3748"})
    assert TOKEN in content["errors"]


async def test_a_stopped_standby_leaves_rotation_reads_still_answer_and_it_rejoins(
        api, client, replica_pair, standby_dsn):
    pipeline = await api.pipeline()
    _, standby_cluster = replica_pair
    standby_cluster.stop()
    try:
        for _ in range(5):  # the first may meet a dead pooled connection: retried on primary
            await api.get(f"/pipelines/{pipeline['id']}/runs/", headers={})
        ready = await api.get("/health/ready")
        [report] = ready["replicas"]
        assert report["name"] == replica_name(standby_dsn) and report["healthy"] is False
        _, fallbacks = await routing(client)
        assert fallbacks.get("no_replica", 0) + fallbacks.get("replica_error", 0) >= 5
    finally:
        standby_cluster.start()

    async def back_in_rotation():
        return (await api.get("/health/ready"))["replicas"][0]["healthy"]

    await wait_until(back_in_rotation, DEADLINE, what="the standby to rejoin the rotation")
    before, _ = await routing(client)
    await api.get(f"/pipelines/{pipeline['id']}/")
    after, _ = await routing(client)
    label = replica_label(standby_dsn)
    assert after[label] == before.get(label, 0) + 1


async def test_lists_and_history_under_load_are_served_by_the_standby(
        api, client, db, standby, standby_dsn):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(5)]
    await caught_up(db, standby)
    paths = [f"/pipelines/{pipeline['id']}/runs/", "/runs/", "/pipelines/",
             f"/pipelines/{pipeline['id']}/stages/",
             *(f"/pipelines/{pipeline['id']}/runs/{r['id']}/events/" for r in runs),
             *(f"/runs/{r['id']}/stageruns/" for r in runs), "/events/"]
    before, fallbacks_before = await routing(client)
    answers = await asyncio.gather(*(api.get(p) for p in paths * 4))
    assert all(a is not None for a in answers)
    after, fallbacks_after = await routing(client)
    label = replica_label(standby_dsn)
    assert after[label] - before.get(label, 0) == len(paths) * 4
    assert after.get("primary:", 0) == before.get("primary:", 0)
    assert fallbacks_after == fallbacks_before


async def test_the_feed_tailed_from_the_standby_sees_every_event_exactly_once(
        api, client, db, enterprise, standby_dsn):
    pipeline = await api.pipeline()
    writers_done = asyncio.Event()

    async def writer():
        for _ in range(6):
            run = await api.run(pipeline["id"])
            await api.move(run, "running", "waiting", "running", "cancelled")

    async def write_all():
        try:
            await asyncio.gather(*(writer() for _ in range(4)))
        finally:
            writers_done.set()

    seen: list[int] = []
    requests = 0

    async def tail():
        nonlocal requests
        after = 0
        while True:
            done = writers_done.is_set()
            page = await api.get("/events/", params={"after": after, "limit": 7, "wait": 1})
            requests += 1
            seen.extend(e["id"] for e in page["results"])
            after = page["next_after"]
            if done and not page["results"]:
                stored = await db.fetchval(
                    "SELECT count(*) FROM run_events WHERE enterprise_id = $1", enterprise)
                if len(seen) >= stored:
                    return

    before, _ = await routing(client)
    await asyncio.wait_for(asyncio.gather(write_all(), tail()), DEADLINE * 2)
    stored = await db.fetch("SELECT id FROM run_events WHERE enterprise_id = $1 "
                            "ORDER BY position", enterprise)
    assert len(seen) == len(set(seen)), "an event was served twice"
    assert seen == [str(r["id"]) for r in stored], "an event was skipped or out of order"
    after, _ = await routing(client)
    label = replica_label(standby_dsn)
    # The standby served the tail (a woken long-poll may go to the primary when the standby
    # takes longer than REPLICA_WAIT_MS to replay the commit: on a loaded machine, some do).
    assert after[label] - before.get(label, 0) > 0, requests


async def test_a_long_poll_woken_by_a_commit_answers_it_even_from_a_paused_standby(
        api, client, db, standby, enterprise):
    """NOTIFY reaches the primary's listener; the woken read asks for the commit's position,
    which the paused standby does not have: the primary answers, at once, not at the end of
    the wait (without the position the paused standby would answer "nothing" until then)."""
    pipeline = await api.pipeline()
    await caught_up(db, standby)
    start = (await api.get("/events/"))["next_after"]
    async with replay_paused(standby):
        poll = asyncio.create_task(api.get("/events/", params={"after": start, "wait": 30}))
        waiters = client.app[FEED_WAITERS]
        await wait_until(lambda: _subscribed(waiters, enterprise), DEADLINE,
                         what="the long-poll to wait")
        _, fallbacks_before = await routing(client)
        run = await api.run(pipeline["id"])
        page = await asyncio.wait_for(poll, 25)  # before its 30 s are up
        assert [e["run_id"] for e in page["results"]] == [run["id"]]
        _, fallbacks = await routing(client)
        assert fallbacks["not_caught_up"] > fallbacks_before.get("not_caught_up", 0)


async def _subscribed(waiters, enterprise: str) -> bool:
    return bool(waiters._events.get(enterprise))  # a long-poll of this enterprise is waiting
