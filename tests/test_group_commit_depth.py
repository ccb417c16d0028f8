"""Group commit with several groups of a lane in flight (app/groupcommit.py, "Depth")."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from service.app.chain import verify_chains
from service.app.groupcommit import GroupCommit
from service.app.replay import verify
from service.infra.db import create_pool
from service.store.locks import FEED_LOCK
from service.web.keys import GROUP_COMMIT
from tests.helpers import lock_waiters, tail_feed, wait_until


@pytest.fixture
def db_dsn(own_db):
    return own_db


@dataclass
class Item:
    run_id: int
    n: int


async def test_two_groups_fly_at_once_and_a_runs_second_change_waits_for_its_first(
        config, db_dsn):
    pool = await create_pool(config, db_dsn)
    log: list[tuple[str, list[int]]] = []
    gates: dict[int, asyncio.Event] = {}  # by the group's first item's n

    async def execute(conn, items):
        ns = [i.n for i in items]
        log.append(("start", ns))
        gate = gates.setdefault(ns[0], asyncio.Event())
        await gate.wait()
        log.append(("end", ns))
        return ns

    def started(n):
        return ("start", n) in {(kind, ns[0]) for kind, ns in log}

    group = GroupCommit(pool, 5, execute, depth=2)
    try:
        first = [asyncio.create_task(group.run("ent", Item(run, n))) for run, n in ((1, 1), (2, 2))]
        await wait_until(lambda: started(1), what="the first group to start")
        # While it is in flight: a second change of run 2, and a change of run 3.
        later = [asyncio.create_task(group.run("ent", Item(run, n))) for run, n in ((2, 3), (3, 4))]
        await wait_until(lambda: started(4), what="the second group to start")
        assert log == [("start", [1, 2]), ("start", [4])]  # run 2's second change held back
        assert group.overlapped == 1
        gates[4].set()  # the second group commits first; run 2 is still in flight
        assert (await later[1]) == (4, None)
        assert not later[0].done() and not started(3)
        gates[1].set()
        assert [await t for t in first] == [(1, None), (2, None)]
        gates.setdefault(3, asyncio.Event()).set()
        assert (await later[0]) == (3, None)
        # Run 2's second change was sent only after its first one's group had committed.
        assert log.index(("start", [3])) > log.index(("end", [1, 2]))
        assert group.overlapped == 1  # it went alone: nothing else was in flight
    finally:
        for gate in gates.values():
            gate.set()
        await pool.close()


async def test_a_second_group_goes_out_once_as_many_wait_as_the_first_carries(config, db_dsn):
    pool = await create_pool(config, db_dsn)
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def execute(conn, items):
        sent.append([i.n for i in items])
        await gate.wait()
        return [i.n for i in items]

    group = GroupCommit(pool, 5, execute, depth=2)
    try:
        first = [asyncio.create_task(group.run("ent", Item(n, n))) for n in range(4)]
        await wait_until(lambda: sent, what="the first group to go out")
        assert sent == [[0, 1, 2, 3]]
        # Fewer than the 4 in flight: they wait for it (as with one group at a time).
        waiting = [asyncio.create_task(group.run("ent", Item(n, n))) for n in range(4, 7)]
        await wait_until(lambda: group.pending() == (3, 4), what="three changes queued")
        assert len(sent) == 1
        waiting.append(asyncio.create_task(group.run("ent", Item(7, 7))))  # the fourth
        await wait_until(lambda: len(sent) == 2, what="a second group beside the first")
        assert sent[1] == [4, 5, 6, 7] and group.overlapped == 1
        gate.set()
        assert [await t for t in first + waiting] == [(n, None) for n in range(8)]
    finally:
        gate.set()
        await pool.close()


async def test_a_lane_overlaps_only_while_other_lanes_leave_their_share_unused(config, db_dsn):
    """Two lanes, depth 2: with both lanes busy each keeps to one statement (many
    enterprises: groups as large as before); one busy lane alone takes two."""
    pool = await create_pool(config, db_dsn)
    sent: list[tuple[str, list[int]]] = []
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def execute(conn, items):
        ent = items[0].ent
        sent.append((ent, [i.n for i in items]))
        await gates[ent].wait()
        return [i.n for i in items]

    group = GroupCommit(pool, 5, execute, lanes=2, depth=2)
    names = {}  # an enterprise id per lane (hash() of a str varies per process)
    for k in range(100):
        names.setdefault(hash(f"ent-{k}") % 2, f"ent-{k}")
    a, b = names[0], names[1]

    def run(ent, tag, n):
        return asyncio.create_task(group.run(ent, LaneItem(n, n, tag)))

    try:
        tasks = [run(a, "a", 0), run(b, "b", 100)]
        await wait_until(lambda: len(sent) == 2, what="a group in each lane")
        tasks += [run(a, "a", n) for n in (1, 2)] + [run(b, "b", n) for n in (101, 102)]
        await wait_until(lambda: group.pending() == (4, 2), what="the changes queued")
        assert len(sent) == 2 and group.overlapped == 0  # both lanes busy: no second slot
        gates["b"].set()  # lane b drains and goes idle ...
        await wait_until(lambda: ("a", [1, 2]) in sent, what="lane a's second group")
        assert sent.index(("b", [101, 102])) < sent.index(("a", [1, 2]))
        assert group.overlapped == 1  # ... so lane a took its share, beside its first group
        assert not tasks[0].done()
        gates["a"].set()
        assert sorted(r for r, _ in [await t for t in tasks]) == [0, 1, 2, 100, 101, 102]
    finally:
        for gate in gates.values():
            gate.set()
        await pool.close()


@dataclass
class LaneItem:
    run_id: int
    n: int
    ent: str


async def test_groups_queued_behind_the_feed_lock_keep_the_feed_and_chain_exact(
        api, client, db, db_dsn, enterprise):
    """Two groups of one enterprise in the database at once, both waiting for its feed lock,
    and a run's second change queued behind its first: positions follow commit order, no
    gaps, the chain links in feed order, and the run's changes land in the order asked."""
    pipeline = await api.pipeline()
    runs = [await api.move(await api.run(pipeline["id"]), "running") for _ in range(4)]
    group = client.server.app[GROUP_COMMIT]
    assert group.depth >= 2
    url = [f"/pipelines/{r['pipeline_id']}/runs/{r['id']}/" for r in runs]
    holder = await asyncpg.connect(db_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"SELECT {FEED_LOCK}", enterprise)
        a = asyncio.ensure_future(api.put(url[0], {"status": "waiting"}))
        await wait_until(lambda: lock_waiters(holder), what="the first group at the feed lock")
        overlapped = group.overlapped
        b = [asyncio.ensure_future(api.put(u, {"status": "waiting"})) for u in url[1:]]
        await wait_until(lambda: group.overlapped > overlapped, what="a second group sent")
        await wait_until(lambda: _waiters_at_least(holder, 2),
                         what="the second group at the feed lock")
        again = asyncio.ensure_future(api.put(url[0], {"status": "running"}))
        # Every change has reached the group commit: two groups in flight, the rest queued
        # (run 0's second change among them: its first is in flight).
        await wait_until(lambda: sum(group.pending()) == 5, what="every change at the lane")
        assert group.pending()[0] >= 1
        await tx.commit()
        answers = await asyncio.wait_for(asyncio.gather(a, *b, again), 30)
    finally:
        await holder.close()
    assert [x["status"] for x in answers] == ["waiting"] * 4 + ["running"]
    events = await db.fetch("""
        SELECT run_id, position, version, to_status FROM run_events
        WHERE enterprise_id = $1 ORDER BY position""", enterprise)
    first_run = [e for e in events if str(e["run_id"]) == runs[0]["id"]]
    assert [e["to_status"] for e in first_run][-2:] == ["waiting", "running"]
    assert [e["version"] for e in first_run] == list(range(1, len(first_run) + 1))
    feed = await api.get("/events/?limit=1000")
    assert [e["position"] for e in feed["results"]] == [e["position"] for e in events]
    assert (await verify(db)).clean
    assert (await verify_chains(db))[1] == []


async def _waiters_at_least(conn, n: int) -> bool:
    return await lock_waiters(conn) >= n


async def test_one_enterprise_under_overlapping_groups_feeds_every_event_once(
        api, client, db, db_dsn, enterprise):
    """Rounds of concurrent changes of one enterprise, each in two waves while its feed lock
    is held, so a second group goes out beside the first, while a consumer tails the feed:
    it sees every event exactly once, in order; projections and chain stay exact."""
    pipeline = await api.pipeline()
    runs = [await api.move(await api.run(pipeline["id"]), "running") for _ in range(30)]
    group = client.server.app[GROUP_COMMIT]
    seen: list[int] = []
    done = asyncio.Event()

    def put(run, target):
        return asyncio.ensure_future(
            api.put(f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/", {"status": target}))

    tail = asyncio.create_task(tail_feed(api, done, seen, 9))
    holder = await asyncpg.connect(db_dsn)
    try:
        for target in ("waiting", "running") * 3:
            overlapped = group.overlapped
            async with holder.transaction():
                await holder.execute(f"SELECT {FEED_LOCK}", enterprise)
                first = [put(r, target) for r in runs[:15]]
                await wait_until(lambda: sum(group.pending()) == 15, what="the first wave queued")
                second = [put(r, target) for r in runs[15:]]
                await wait_until(lambda: group.overlapped > overlapped, what="a second group")
            moved = await asyncio.gather(*first, *second)
            assert {m["status"] for m in moved} == {target}
    finally:
        await holder.close()
    done.set()
    await tail
    stored = [r["position"] for r in await db.fetch(
        "SELECT position FROM run_events WHERE enterprise_id = $1 ORDER BY position", enterprise)]
    assert len(seen) == len(set(seen)), "an event was served twice"
    assert seen == stored, f"missed {sorted(set(stored) - set(seen))[:10]}"
    assert len(stored) == len(runs) * (2 + 6)
    assert (await verify(db)).clean
    assert (await verify_chains(db))[1] == []
