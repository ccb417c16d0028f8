"""Fair sharing: long-polls per token, pool slots across enterprises, bounded offsets,
unknown tokens that cannot flush the token cache, a readiness probe that spares the pool."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.helpers import as_runtime, make_token, wait_until
from service.config import Config
from service.infra import db as dbinfra
from service.store import tokens as token_store
from service.web.handlers.health import Readiness
from service.web.keys import POOL, POOL_SLOTS, WAIT_CAP
from service.web.slots import FairSlots


@pytest.fixture
def config(db_dsn) -> Config:
    # A cache far longer than any test here: what is cached stays cached.
    return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=2, token_cache_seconds=3600,
                  max_waits_per_token=2)


async def test_a_token_holds_at_most_max_waits_long_polls(api, client, db, enterprise):
    cap = client.server.app[WAIT_CAP]
    head = (await api.get("/events/"))["next_after"]
    polls = [asyncio.create_task(api.get(f"/events/?after={head}&wait=20")) for _ in range(2)]
    token_id = await db.fetchval("SELECT id FROM api_tokens WHERE enterprise_id = $1",
                                 enterprise)
    await wait_until(lambda: cap.open(token_id) == 2)
    started = time.monotonic()
    refused = await api.get(f"/events/?after={head}&wait=20", status=429)
    assert time.monotonic() - started < 15  # at once, not after its 20 s wait
    assert refused == {"retry_after": 1}
    assert "at most 2" in (await api.last.json())["message"]
    assert api.last.headers["Retry-After"] == "1"
    # Without wait it is an ordinary read; another token of the enterprise has its own cap.
    assert (await api.get(f"/events/?after={head}"))["results"] == []
    other = api.with_token(await make_token(db, enterprise, "other"))
    third = asyncio.create_task(other.get(f"/events/?after={head}&wait=20"))
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    for woken in await asyncio.gather(*polls, third):
        assert [e["run_id"] for e in woken["results"]] == [run["id"]]
    await wait_until(lambda: cap.open(token_id) == 0)
    again = await api.get(f"/events/?after={head}&wait=0.1")  # the slots were given back
    assert len(again["results"]) == 1


async def test_pool_slots_go_round_robin_across_enterprises():
    slots = FairSlots(2)
    await slots.acquire("noisy")
    await slots.acquire("noisy")
    granted: list[str] = []

    async def take(key: str) -> None:
        await slots.acquire(key)
        granted.append(key)

    flood = [asyncio.create_task(take("noisy")) for _ in range(50)]
    await wait_until(lambda: slots.waiting() == 50)
    quiet = asyncio.create_task(take("quiet"))
    await wait_until(lambda: slots.waiting() == 51)
    for _ in range(51):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*flood, quiet)
    # The quiet enterprise's request got the second slot released, not the 51st.
    assert granted.index("quiet") <= 1, granted
    # A cancelled waiter gives its turn away and no slot is lost.
    slots = FairSlots(1)
    await slots.acquire("a")
    gone = asyncio.create_task(slots.acquire("b"))
    kept = asyncio.create_task(slots.acquire("c"))
    await wait_until(lambda: slots.waiting() == 2)
    gone.cancel()
    slots.release()
    await asyncio.wait_for(kept, 5)
    slots.release()
    assert not slots.locked()


async def test_a_slot_waiter_gives_up_at_its_timeout_and_loses_no_slot():
    slots = FairSlots(1)
    await slots.acquire("a")
    with pytest.raises(TimeoutError):
        await slots.acquire("b", timeout=0.05)
    assert slots.waiting() == 0  # it left the queue
    later = asyncio.create_task(slots.acquire("c", timeout=5))
    await wait_until(lambda: slots.waiting() == 1)
    slots.release()
    await asyncio.wait_for(later, 5)  # handed the slot before its timer: keeps it
    slots.release()
    assert not slots.locked()


async def test_a_slot_passes_with_its_connection_to_the_waiter_next_in_turn():
    given_back: list[str] = []
    slots = FairSlots(1, given_back.append)
    assert await slots.acquire("a") is None  # a free slot comes alone
    assert not slots.hand_over("conn-1")  # no one waits: the caller releases it as usual
    first = asyncio.create_task(slots.acquire("b", timeout=5))
    second = asyncio.create_task(slots.acquire("c", timeout=5))
    await wait_until(lambda: slots.waiting() == 2)
    assert slots.has_waiters()
    assert slots.hand_over("conn-1")
    assert await asyncio.wait_for(first, 5) == "conn-1"  # first come, first served
    slots.release()  # its holder gave the connection back to the pool
    assert await asyncio.wait_for(second, 5) is None  # a slot alone: it asks the pool
    # Handed a connection while being cancelled: the connection goes on to the next waiter.
    gone = asyncio.create_task(slots.acquire("d", timeout=5))
    kept = asyncio.create_task(slots.acquire("e", timeout=5))
    await wait_until(lambda: slots.waiting() == 2)
    assert slots.hand_over("conn-2")
    gone.cancel()
    assert await asyncio.wait_for(kept, 5) == "conn-2"
    with pytest.raises(asyncio.CancelledError):
        await gone
    # ... and with no waiter left, back to its pool, the slot freed.
    last = asyncio.create_task(slots.acquire("f", timeout=5))
    await wait_until(lambda: slots.waiting() == 1)
    assert slots.hand_over("conn-3")  # "e" is done: its slot and connection go to "f"
    last.cancel()
    with pytest.raises(asyncio.CancelledError):
        await last
    assert given_back == ["conn-3"]
    assert not slots.locked()


async def test_slot_waiters_time_out_in_order_on_one_timer():
    slots = FairSlots(1)
    await slots.acquire("a")
    started = time.monotonic()
    waits = [asyncio.create_task(slots.acquire("b", timeout=0.05 * (i + 1))) for i in range(3)]
    served = asyncio.create_task(slots.acquire("c", timeout=1.0))
    shorter = asyncio.create_task(slots.acquire("d", timeout=0.01))  # before those queued
    await wait_until(lambda: slots.waiting() == 5 or shorter.done())
    for wait in (shorter, *waits):
        with pytest.raises(TimeoutError):
            await wait
    assert time.monotonic() - started >= 0.14  # each at its own deadline, not the first's
    slots.release()  # "c" is still there: served before its deadline, it keeps the slot
    assert await asyncio.wait_for(served, 5) is None
    await asyncio.sleep(1.0)  # past its deadline: the timer leaves a served waiter alone
    assert slots.locked() and slots.waiting() == 0
    slots.release()
    assert not slots.locked()


async def test_requests_pass_connections_on_yet_the_pool_s_other_callers_get_theirs(
        api, client, monkeypatch):
    """Pool of 2, 8 readers: a reader done with its connection hands it to the next reader
    waiting for a slot, but not while anything else (a group-commit lane, the dispatcher)
    waits on the pool: that caller gets the next connection released."""
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    path = f"/pipelines/{pipeline['id']}/runs/{run['id']}/"
    app = client.server.app
    pool, slots = app[POOL], app[POOL_SLOTS]
    passed = 0
    hand_over = FairSlots.hand_over

    def counted(self, conn) -> bool:
        nonlocal passed
        handed = hand_over(self, conn)
        passed += handed
        return handed

    monkeypatch.setattr(FairSlots, "hand_over", counted)
    answered = 0
    stop = False

    async def reader() -> None:
        nonlocal answered
        while not stop:
            assert (await api.get(path))["id"] == run["id"]
            answered += 1

    readers = [asyncio.create_task(reader()) for _ in range(8)]
    try:
        await wait_until(lambda: slots.waiting() >= 3 and answered >= 20)
        for _ in range(5):  # the pool's other callers wait one request, not all of them
            started = time.monotonic()
            async with pool.acquire(timeout=5):
                assert time.monotonic() - started < 2
            await asyncio.sleep(0.01)
    finally:
        stop = True
        await asyncio.gather(*readers)
    assert passed > answered / 2, (passed, answered)  # most skipped the pool


async def test_only_a_connection_release_would_just_put_back_is_passed_on(db_dsn):
    pool = await dbinfra.create_pool(Config(pool_min=1, pool_max=1), db_dsn)
    try:
        conn = await pool.acquire()
        assert dbinfra.fit_to_pass_on(pool, conn)
        transaction = conn.transaction()
        await transaction.start()
        assert not dbinfra.fit_to_pass_on(pool, conn)  # release() rolls it back
        await transaction.rollback()
        other = asyncio.ensure_future(pool.acquire())  # someone else waits on the pool
        await wait_until(lambda: not dbinfra.fit_to_pass_on(pool, conn))
        await pool.release(conn)
        conn = await asyncio.wait_for(other, 5)  # ... and gets it
        dbinfra.keeps_session_state(conn)
        assert not dbinfra.fit_to_pass_on(pool, conn)  # release() resets it
        await pool.release(conn)
        async with pool.acquire() as conn:
            assert dbinfra.fit_to_pass_on(pool, conn)  # reset: fit again
            conn.terminate()
            assert not dbinfra.fit_to_pass_on(pool, conn)
    finally:
        pool.terminate()


async def test_a_flooding_enterprise_does_not_delay_another_s_requests(api, client, db):
    """Pool of 2: the noisy enterprise's 30 creates queue on its pipeline's row lock; the
    quiet enterprise's read gets the next free connection, not the 31st."""
    quiet = api.with_token(await make_token(db, f"ent-{uuid.uuid4().hex[:12]}", "quiet"))
    quiet_pipeline = await quiet.pipeline()
    await quiet.get(f"/pipelines/{quiet_pipeline['id']}/")  # its token is now cached
    pipeline = await api.pipeline()
    slots = client.server.app[POOL_SLOTS]
    done: list[str] = []

    async def call(who: str, coro) -> None:
        await coro
        done.append(who)

    await db.execute("BEGIN")
    await db.execute("SELECT FROM pipelines WHERE id = $1 FOR UPDATE", uuid.UUID(pipeline["id"]))
    noisy = [asyncio.create_task(call("noisy", api.run(pipeline["id"]))) for _ in range(30)]
    await wait_until(lambda: slots.waiting() == 28)  # 2 hold the connections, blocked
    read = asyncio.create_task(call("quiet", quiet.get(f"/pipelines/{quiet_pipeline['id']}/")))
    await wait_until(lambda: slots.waiting() == 29)
    await db.execute("COMMIT")
    await asyncio.gather(*noisy, read)
    assert done.index("quiet") <= 4, done


async def test_offset_past_10000_is_a_400_that_points_to_the_cursor(api):
    pipeline = await api.pipeline()
    path = f"/pipelines/{pipeline['id']}/runs/"
    assert (await api.get(f"{path}?offset=10000"))["results"] == []
    refused = await api.get(f"{path}?offset=10001", status=400)
    assert "cursor" in refused["errors"]["offset"][0], refused
    assert "cursor" in (await api.get("/pipelines/?offset=20000", status=400))["errors"]["offset"][0]


async def test_unknown_tokens_do_not_evict_valid_ones(api, db, enterprise):
    """10,050 distinct unknown tokens: a valid token cached before stays cached (it was
    revoked meanwhile, so a lookup would refuse it: it is answered from the cache)."""
    await api.get("/pipelines/")
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE enterprise_id = $1",
                     enterprise)
    sem = asyncio.Semaphore(32)

    async def unknown(i: int) -> None:
        async with sem:
            resp = await api.client.get(api.url("/pipelines/"),
                                        headers={"Authorization": f"Bearer nope-{i}"})
            assert resp.status == 401
            resp.release()

    await asyncio.gather(*(unknown(i) for i in range(10_050)))
    assert (await api.get("/pipelines/"))["results"] == []  # 200: still cached


async def test_an_unknown_token_is_cached_negatively(api, db, enterprise):
    stranger = "pr_not-yet-issued"
    await api.with_token(stranger).get("/pipelines/", status=401)
    await db.execute("INSERT INTO api_tokens (enterprise_id, name, token_hash, scopes) "
                     "VALUES ($1, 'late', $2, $3)", enterprise,
                     token_store.hash_token(stranger), list(token_store.DEFAULT_SCOPES))
    # Within TOKEN_CACHE_SECONDS the refusal is remembered: no lookup per request.
    await api.with_token(stranger).get("/pipelines/", status=401)


async def test_readiness_shares_one_check_and_spares_the_pool(db_dsn):
    pool = await dbinfra.create_pool(Config(pool_min=1, pool_max=1), db_dsn)
    try:
        ready = Readiness(pool, timeout=0.5, fresh=30)
        assert await ready.ready()
        async with pool.acquire():  # the pool's only connection is busy
            answers = await asyncio.gather(*(ready.ready() for _ in range(50)))
        assert answers == [True] * 50  # answered without a connection
        # Once the listener is known lost, it asks at once (and finds the pool busy).
        async with pool.acquire():
            assert not await ready.ready(listening=False)
    finally:
        await pool.close()
