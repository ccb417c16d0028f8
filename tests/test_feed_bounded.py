"""Bounded feed reads: a scan cap with a resumable cursor, long-polls that re-read only when
woken, and wake-ups sent after the commit (not from inside the writing transaction)."""
from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.helpers import Api, wait_until, as_runtime
from service.config import Config
from service.store.locks import FEED_CHANNEL, FEED_LOCK
from service.web.app import create_app
from service.web.keys import FEED_WAITERS

CAP = 50
# Feed reads of this database waiting for a lock (the test's lock on run_events).
FEED_READS_BLOCKED = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND query LIKE '%e.enterprise_id = $1 AND e.position > $2%'
"""


@pytest.fixture
def config(db_dsn) -> Config:
    return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=5, token_cache_seconds=60,
                  feed_scan_cap=CAP)


async def _events(api: Api, runs: int) -> list[int]:
    """2 x runs events (created, then running); their positions."""
    pipeline = await api.pipeline()
    for _ in range(runs):
        await api.move(await api.run(pipeline["id"]), "running")
    return [e["position"] for e in (await api.get("/events/?limit=1000"))["results"]]


async def test_a_filtered_read_examines_at_most_the_cap_and_says_where_to_resume(api):
    positions = await _events(api, 30)  # 60 events
    first = await api.get("/events/?type=nope&limit=10")
    assert first["results"] == [] and first["caught_up"] is False
    assert first["next_after"] == positions[CAP - 1]  # the last one examined
    second = await api.get(first["next"])
    assert second["results"] == [] and second["caught_up"] is True
    assert second["next_after"] == positions[-1]
    # Matches among the examined ones are answered; a full page resumes after its last.
    page = await api.get("/events/?type=run.created&limit=10")
    assert [e["type"] for e in page["results"]] == ["run.created"] * 10
    assert page["next_after"] == page["results"][-1]["position"] and not page["caught_up"]
    # Paging through with the cursor finds every match exactly once.
    found, after = [], 0
    while True:
        page = await api.get(f"/events/?type=run.status_changed&limit=7&after={after}")
        found += [e["position"] for e in page["results"]]
        after = page["next_after"]
        if page["caught_up"]:
            break
    assert found == positions[1::2]


async def test_a_long_poll_on_a_filter_matching_nothing_does_not_rescan(api):
    positions = await _events(api, 30)
    started = time.monotonic()
    capped = await api.get("/events/?after=0&type=nope&limit=10&wait=10")
    assert time.monotonic() - started < 9  # answered at the cap, not after its 10 s wait
    assert capped["results"] == [] and capped["next_after"] == positions[CAP - 1]
    tail = await api.get(f"/events/?after={capped['next_after']}&type=nope&limit=10&wait=1")
    assert tail["results"] == [] and tail["next_after"] == positions[-1]


async def test_a_long_poll_re_reads_only_when_woken(api, client, db, enterprise):
    """While it waits (listener up, no write of its enterprise) it sends no query: with
    run_events locked by the test, a re-read would show as a lock request waiting."""
    head = (await api.get("/events/"))["next_after"]
    poll = asyncio.create_task(api.get(f"/events/?after={head}&wait=20"))
    waiters = client.server.app[FEED_WAITERS]
    await wait_until(lambda: waiters.waiting(enterprise), what="the long-poll to subscribe")
    await asyncio.sleep(0.1)
    assert waiters.listening
    await db.execute("BEGIN")
    await db.execute("LOCK TABLE run_events IN ACCESS EXCLUSIVE MODE")
    try:
        for _ in range(25):  # 2.5 s: more than the old 1 s re-query tick, twice
            blocked = await db.fetchval(FEED_READS_BLOCKED)
            assert blocked == 0, "the waiting long-poll re-queried without being woken"
            await asyncio.sleep(0.1)
    finally:
        await db.execute("ROLLBACK")
    assert not poll.done()
    started = time.monotonic()
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    woke = await poll
    assert [e["run_id"] for e in woke["results"]] == [run["id"]]
    assert time.monotonic() - started < 15  # woken, not its 20 s wait (a loaded machine)


async def test_a_write_wakes_long_polls_of_another_process(api, aiohttp_client, config,
                                                           enterprise):
    """Two app instances (as two workers or replicas): the one that wrote notifies after
    its commit, and the other's long-poll wakes."""
    other = Api(await aiohttp_client(create_app(config)), api.token)
    head = (await api.get("/events/"))["next_after"]
    poll = asyncio.create_task(other.get(f"/events/?after={head}&wait=20"))
    waiters = other.client.server.app[FEED_WAITERS]
    await wait_until(lambda: waiters.waiting(enterprise),
                     what="the other app's long-poll to subscribe")
    started = time.monotonic()
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    woke = await poll
    assert [e["run_id"] for e in woke["results"]] == [run["id"]]
    assert time.monotonic() - started < 15  # woken, not its 20 s wait (a loaded machine)


async def test_the_wake_up_is_not_sent_inside_the_write(api, db_dsn):
    """The feed lock no longer notifies: a NOTIFY in the writing transaction serializes
    every notifying commit of the cluster. The notification comes after the commit, once
    per enterprise for writes close together."""
    assert "pg_notify" not in FEED_LOCK
    listener = await asyncpg.connect(db_dsn)
    heard: list[str] = []
    try:
        await listener.add_listener(FEED_CHANNEL, lambda *args: heard.append(args[3]))
        pipeline = await api.pipeline()
        await asyncio.gather(*(api.run(pipeline["id"]) for _ in range(10)))
        await wait_until(lambda: heard, what="a NOTIFY after the commits")
    finally:
        await listener.close()
    assert 1 <= len(heard) <= 11  # pipeline + 10 runs, coalesced while a send is in flight
