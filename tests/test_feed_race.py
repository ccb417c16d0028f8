"""The change feed never skips an event, even with many writers committing at once."""
from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from service.web.keys import POOL
from service.app import runs
from service.app.context import Actor, OnConnection
from service.store.locks import NOTIFY_FEED


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def _writer(api, pipeline_id: str, changes: int) -> None:
    for _ in range(changes):
        run = await api.run(pipeline_id)
        path = f"/pipelines/{pipeline_id}/runs/{run['id']}/"
        for status in random.choice([["running", "waiting"], ["queued"], ["cancelled"]]):
            await api.put(path, {"status": status})


async def _slow_writer(pool, enterprise: str, pipeline_id: str, changes: int) -> None:
    """Appends, then lingers before COMMIT: the widest window for an out-of-order commit.

    After each commit it wakes the feed's readers as the service's own writers do (a NOTIFY
    after commit, infra/feedwait.py): a reader must not depend on another writer for it."""
    for _ in range(changes):
        async with pool.acquire() as conn:
            async with conn.transaction():
                await runs.create(OnConnection(conn), Actor(enterprise, "slow", None),
                                  uuid.UUID(pipeline_id))
                await asyncio.sleep(0.02)
            await conn.execute(NOTIFY_FEED, [enterprise])


async def test_tailing_consumer_sees_every_event_exactly_once(api, client, db, enterprise):
    pipelines = [await api.pipeline(f"p{i}") for i in range(4)]
    seen: list[int] = []
    done = asyncio.Event()

    async def consumer():
        after = 0
        while True:
            finished = done.is_set()  # read before querying: the last read is after all commits
            feed = await api.get(f"/events/?after={after}&limit=7")
            seen.extend(e["position"] for e in feed["results"])
            after = feed["next_after"]
            if finished and not feed["results"]:
                return

    tail = asyncio.create_task(consumer())
    pool = client.app[POOL]
    await asyncio.gather(
        *(_writer(api, pipelines[i % 4]["id"], 15) for i in range(10)),
        *(_slow_writer(pool, enterprise, pipelines[i]["id"], 10) for i in range(3)),
    )
    done.set()
    await tail
    stored = [r["position"] for r in await db.fetch(
        "SELECT position FROM run_events WHERE enterprise_id = $1 ORDER BY position", enterprise)]
    assert len(stored) > 300
    assert len(seen) == len(set(seen)), "an event was served twice"
    assert seen == stored, f"missed {sorted(set(stored) - set(seen))[:10]}"
