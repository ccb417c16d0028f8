"""Group commit: concurrent simple status changes of an enterprise share a transaction."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from service.infra.db import create_pool
from service.app.positions import primary_position
from service.app.groupcommit import GroupCommit
from service.store.locks import FEED_CHANNEL
from service.web.keys import FEED_WAITERS, GROUP_COMMIT
from service.app.chain import verify_chains
from service.app.replay import verify
from tests.helpers import lock_waiters, make_token, wait_until


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def _runs(api, n: int) -> list[dict]:
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(n)]
    return [await api.move(r, "running") for r in runs]


def _url(run: dict) -> str:
    return f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"


async def test_concurrent_changes_share_commits_and_stay_exact(api, client, db, enterprise):
    runs = await _runs(api, 30)
    group = client.server.app[GROUP_COMMIT]
    before = group.groups
    for target in ("waiting", "running", "waiting"):
        moved = await asyncio.gather(*(api.put(_url(r), {"status": target}) for r in runs))
        assert {m["status"] for m in moved} == {target}
    assert group.groups > before  # some of them were committed together

    versions = await db.fetch("""
        SELECT run_id, array_agg(version ORDER BY version) AS v, count(*) AS n
        FROM run_events WHERE enterprise_id = $1 GROUP BY run_id""", enterprise)
    assert all(r["v"] == list(range(1, r["n"] + 1)) for r in versions)
    assert {r["n"] for r in versions} == {1 + 1 + 3}  # created, running, the 3 moves
    # The feed has every event once, in position order.
    feed = await api.get("/events/?limit=1000")
    positions = [e["position"] for e in feed["results"]]
    assert positions == sorted(positions) and len(positions) == len(set(positions))
    assert len(positions) == sum(r["n"] for r in versions)
    assert (await verify(db)).drifts == []


async def test_changes_of_many_enterprises_share_statements_and_stay_exact(api, client, db):
    """Lanes (app/groupcommit.py): one statement carries several enterprises' changes; each
    enterprise's events, feed, counters and projection stay exact."""
    tenants = []
    for k in range(12):
        tenant = api.with_token(await make_token(db, f"lane-{k}-{uuid.uuid4().hex[:8]}"))
        tenants.append((tenant, await _runs(tenant, 3)))
    group = client.server.app[GROUP_COMMIT]
    assert group.lanes < len(tenants)
    before = group.shared
    for target in ("waiting", "running", "waiting"):
        moved = await asyncio.gather(*(tenant.put(_url(r), {"status": target})
                                       for tenant, runs in tenants for r in runs))
        assert {m["status"] for m in moved} == {target}
    assert group.shared > before  # some statements carried several enterprises
    for tenant, runs in tenants:
        feed = await tenant.get("/events/?limit=1000")
        assert [e["position"] for e in feed["results"]] == sorted(
            e["position"] for e in feed["results"])
        assert {e["run_id"] for e in feed["results"]} == {r["id"] for r in runs}
        assert len(feed["results"]) == 3 * 5  # created, running, the 3 moves: per run
        counts = await tenant.get("/runs/?status=waiting")
        assert counts["count"] == 3
    assert (await verify(db)).clean
    assert (await verify_chains(db))[1] == []  # each enterprise's chain in its feed order


async def test_same_run_in_one_group_behaves_as_one_after_the_other(api, db, enterprise):
    (run,) = await _runs(api, 1)
    answers = await asyncio.gather(*(api.put(_url(run), {"status": "waiting"})
                                     for _ in range(12)))
    assert {a["status"] for a in answers} == {"waiting"}
    # One change, the others are no-ops on the run as it then was.
    assert await db.fetchval("""
        SELECT count(*) FROM run_events
        WHERE enterprise_id = $1 AND run_id = $2 AND to_status = 'waiting'""",
        enterprise, run["id"]) == 1
    # If-Match: of many changes expecting the same version, exactly one wins.
    current = await api.get(_url(run))
    results = await asyncio.gather(*(
        api.put(_url(run), {"status": s}, headers={"If-Match": f'"{current["version"]}"'},
                status=(200, 412))
        for s in ("running", "running", "running", "running")))
    assert sum(1 for r in results if r.get("status") == "running") == 1
    assert (await verify(db)).drifts == []


async def test_a_refused_change_leaves_its_group_alone(api):
    runs = await _runs(api, 10)
    done = await asyncio.gather(
        *(api.put(_url(r), {"status": "waiting"}) for r in runs[:9]),
        api.put(_url(runs[9]), {"status": "queued"}, status=409),  # running -> queued: illegal
        api.put(f"/pipelines/{runs[0]['pipeline_id']}/runs/{runs[0]['pipeline_id']}/",
                {"status": "waiting"}, status=404))
    assert [d["status"] for d in done[:9]] == ["waiting"] * 9
    assert done[9]["current_status"] == "running"


async def test_a_failing_group_is_retried_change_by_change(config, db_dsn):
    pool = await create_pool(config, db_dsn)

    async def execute(conn, items):
        # One statement for the whole group; it fails when an item is 0 or (only in a
        # group of several) a multiple of 3: alone, those succeed.
        failing = [i.n for i in items if i.n == 0 or (len(items) > 1 and i.n % 3 == 0)]
        divisor = 0 if failing else 1
        return await conn.fetchval("SELECT array_agg(n / $2) FROM unnest($1::int[]) n",
                                   [i.n for i in items], divisor)

    group = GroupCommit(pool, 5, execute)
    try:
        outcomes = await asyncio.gather(
            *(group.run("ent", Item(n)) for n in range(1, 9)), group.run("ent", Item(0)),
            return_exceptions=True)
        assert outcomes[:8] == [(n, None) for n in range(1, 9)]  # no position asked for
        assert isinstance(outcomes[8], asyncpg.DivisionByZeroError)
        assert group.groups == 0  # every group of several failed
    finally:
        await pool.close()


async def test_a_group_reads_one_position_after_its_commit_for_all(config, db_dsn):
    pool = await create_pool(config, db_dsn)
    reads: list[int] = []
    started = asyncio.Event()

    async def execute(conn, items):
        started.set()
        # A transaction id makes its commit write a record; the next ones queue meanwhile.
        await conn.execute("SELECT txid_current() FROM pg_sleep(0.05)")
        return [i.n for i in items]

    async def position(conn, enterprise_ids):
        assert enterprise_ids == ["ent"]
        reads.append(await primary_position(conn))
        return reads[-1]

    group = GroupCommit(pool, 5, execute, position)
    try:
        first = asyncio.create_task(group.run("ent", Item(0)))
        await started.wait()
        outcomes = [await first, *await asyncio.gather(
            *(group.run("ent", Item(n)) for n in range(1, 6)))]
        assert [result for result, _ in outcomes] == list(range(6))
        assert len(reads) == 2  # the first change alone, then the five queued behind it
        assert [position for _, position in outcomes] == [reads[0]] + [reads[1]] * 5
        assert reads[0] < reads[1]  # each read after its group's commit
    finally:
        await pool.close()


async def test_a_group_wakes_other_processes_readers_itself(api, client, db_dsn, enterprise):
    """The group's position read carries its feed wake-up (one round trip after its commit):
    another session LISTENing hears it by the time the change is answered, and the request
    sends no second one; a write outside group commit still sends its own."""
    (run,) = await _runs(api, 1)
    waiters = client.server.app[FEED_WAITERS]
    sends: list[set] = []

    async def send():  # stands in for the process's own NOTIFY, counting what it would send
        sends.append(set(waiters._pending))
        waiters._pending.clear()
        waiters._sending = None

    waiters._send = send
    heard: asyncio.Queue = asyncio.Queue()
    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener(FEED_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        moved = await api.put(_url(run), {"status": "waiting"})
        assert moved["status"] == "waiting" and moved["version"] == run["version"] + 1
        assert api.last.headers["Consistency-Token"].startswith("1.")
        assert await asyncio.wait_for(heard.get(), 10) == enterprise
        assert sends == []  # announced by the group: the request woke this process only
        await api.run(run["pipeline_id"])  # not a group commit: the request sends it
        assert sends == [{enterprise}]
    finally:
        await listener.close()


async def test_a_groups_notify_wakes_this_processes_long_poll(api, client, enterprise):
    """The request of a group sends no wake-up of its own: the group's NOTIFY, heard by
    this process's listener, wakes its long-polls (no tick: the listener is up)."""
    (run,) = await _runs(api, 1)
    waiters = client.server.app[FEED_WAITERS]
    assert waiters.listening
    head = (await api.get("/events/"))["next_after"]
    waiting = asyncio.create_task(api.get(f"/events/?after={head}&wait=20"))
    await wait_until(lambda: waiters.waiting(enterprise), what="the long-poll to be waiting")
    moved = await api.put(_url(run), {"status": "waiting"})
    answered = time.monotonic()
    feed = await waiting
    assert time.monotonic() - answered < 10  # woken, not answered at its deadline
    assert [(e["run_id"], e["to_status"]) for e in feed["results"]] == [(run["id"], "waiting")]
    assert feed["results"][0]["version"] == moved["version"]


@dataclass
class Item:
    n: int

    @property
    def run_id(self) -> int:
        return self.n


async def test_a_second_change_of_a_run_waits_for_the_next_group(config, db_dsn):
    pool = await create_pool(config, db_dsn)
    seen: list[list[int]] = []

    async def execute(conn, items):
        seen.append([i.n for i in items])
        await conn.execute("SELECT pg_sleep(0.05)")
        return [i.n for i in items]

    group = GroupCommit(pool, 5, execute)
    try:
        outcomes = await asyncio.gather(*(group.run("ent", Item(n)) for n in (1, 2, 3, 2, 4)))
        assert [result for result, _ in outcomes] == [1, 2, 3, 2, 4]
        # All queued before the first slot ran: the first group passes over run 2's second
        # change (and only it), which goes in the next group, sent after the first committed.
        assert seen == [[1, 2, 3, 4], [2]]
    finally:
        await pool.close()


async def test_a_busy_run_does_not_hold_up_the_others(api, db_dsn):
    runs = await _runs(api, 5)
    holder = await asyncpg.connect(db_dsn)
    try:
        # Another transaction holds the first run's row (as a long general-path change would).
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM pipeline_runs WHERE id = $1 FOR UPDATE",
                             runs[0]["id"])
        blocked = asyncio.ensure_future(api.put(_url(runs[0]), {"status": "waiting"}))
        # It is in flight (a group's first change, waiting for the row) before the others.
        await wait_until(lambda: lock_waiters(holder), what="the PUT to wait for the row")
        others = [await asyncio.wait_for(api.put(_url(r), {"status": "waiting"}), 10)
                  for r in runs[1:]]
        assert [o["status"] for o in others] == ["waiting"] * 4
        assert not blocked.done()  # it waits for the row, alone
        await tx.commit()
        assert (await asyncio.wait_for(blocked, 10))["status"] == "waiting"
    finally:
        await holder.close()
