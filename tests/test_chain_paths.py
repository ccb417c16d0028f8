"""The chain trigger's two paths (schema.sql): the first row of a transaction moves the head
in one UPDATE; later rows chain from a transaction-local setting and the statement's end
moves the heads they left behind. Every mix of them must leave the documented chain."""
from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

import asyncpg
import pytest

from service.store import append
from tests.test_audit_chain import EVENTS, GENESIS, canonical

INSERT = ("INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, actor,"
          " occurred_at) SELECT e, gen_random_uuid(), gen_random_uuid(), 1, 'run.created',"
          " 'a', now() FROM unnest($1::text[]) AS e")
HEAD = "SELECT position, events, chain_hash FROM event_chain_heads WHERE enterprise_id = $1"


async def assert_chained(db, enterprise: str, events: int) -> None:
    """The enterprise's events recompute from the documented bytes, and its head is the last."""
    rows = [dict(r) for r in await db.fetch(EVENTS, enterprise)]
    assert len(rows) == events
    head = GENESIS
    for row in rows:
        head = hashlib.sha256(head + canonical(row)).digest()
        assert row["chain_hash"] == head, row["position"]
    assert dict(await db.fetchrow(HEAD, enterprise)) == {
        "position": rows[-1]["position"], "events": events, "chain_hash": head}


@pytest.fixture
def two() -> list[str]:
    return [f"ent-{uuid.uuid4().hex[:12]}" for _ in range(2)]


async def test_every_mix_of_statements_in_one_transaction_keeps_the_chain(db, two):
    a, b = two
    await db.execute(INSERT, [a])  # a first event: the head is made
    async with db.transaction():
        await db.execute(INSERT, [a])  # first row of the transaction: the head's UPDATE
        await db.execute(INSERT, [b, a, b, a, a])  # one statement, both enterprises interleaved
        await db.execute(INSERT, [a])  # a later statement: from the setting alone
        async with db.transaction():  # a savepoint: its rows and settings go back together
            await db.execute(INSERT, [a, b])
        with pytest.raises(asyncpg.UniqueViolationError):
            async with db.transaction():
                await db.execute(INSERT, [b, a])
                await db.execute("INSERT INTO run_events (enterprise_id, pipeline_id, run_id,"
                                 " version, type, actor, occurred_at) VALUES ($1,"
                                 " gen_random_uuid(), '00000000-0000-0000-0000-000000000001',"
                                 " 2, 'run.created', 'a', now())", a)
    await assert_chained(db, a, 7)
    await assert_chained(db, b, 3)
    await db.execute(INSERT, [b, b])  # a new transaction starts from the heads again
    await assert_chained(db, b, 5)


async def test_copy_after_an_append_chains_and_moves_the_head(db, two):
    a, _ = two
    now = datetime.now(timezone.utc)
    records = [(a, uuid.uuid4(), uuid.uuid4(), 1, "run.created", None, "pending", "a", None,
                now, {}) for _ in range(50)]
    async with db.transaction():
        await db.execute(INSERT, [a])
        await append.copy_events(db, a, records)
    await assert_chained(db, a, 51)


@pytest.mark.parametrize("earlier", [False, True])
async def test_an_append_behind_the_chain_is_refused(db, two, earlier):
    """A writer whose position is not after the head's (no feed lock) is refused on either
    path: from the head (a new transaction) and from the setting (later in one)."""
    a, _ = two
    await db.execute(INSERT, [a])
    position = await db.fetchval("SELECT position FROM event_chain_heads WHERE enterprise_id = $1",
                                 a)
    behind = ("INSERT INTO run_events (position, enterprise_id, pipeline_id, run_id, version,"
              " type, actor, occurred_at) OVERRIDING SYSTEM VALUE VALUES ($1, $2,"
              " gen_random_uuid(), gen_random_uuid(), 1, 'run.created', 'a', now())")
    with pytest.raises(asyncpg.SerializationError, match="is behind its chain"):
        async with db.transaction():
            if earlier:
                await db.execute(INSERT, [a])
                position += 1
            await db.execute(behind, position, a)
    await assert_chained(db, a, 1)
