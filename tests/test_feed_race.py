"""The change feed never skips an event, even with many writers committing at once."""
from __future__ import annotations

import asyncio

import pytest

from service.web.keys import POOL
from tests.helpers import random_writer, slow_writer


@pytest.fixture
def db_dsn(own_db):
    return own_db


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
        *(random_writer(api, pipelines[i % 4]["id"], 15) for i in range(10)),
        *(slow_writer(pool, enterprise, pipelines[i]["id"], 10) for i in range(3)),
    )
    done.set()
    await tail
    stored = [r["position"] for r in await db.fetch(
        "SELECT position FROM run_events WHERE enterprise_id = $1 ORDER BY position", enterprise)]
    assert len(stored) > 300
    assert len(seen) == len(set(seen)), "an event was served twice"
    assert seen == stored, f"missed {sorted(set(stored) - set(seen))[:10]}"
