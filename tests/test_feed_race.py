"""The change feed never skips an event, even with many writers committing at once."""
from __future__ import annotations

import asyncio

import pytest

from service.web.keys import POOL
from tests.helpers import random_writer, slow_writer, tail_feed


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def test_tailing_consumer_sees_every_event_exactly_once(api, client, db, enterprise):
    pipelines = [await api.pipeline(f"p{i}") for i in range(4)]
    seen: list[int] = []
    done = asyncio.Event()

    tail = asyncio.create_task(tail_feed(api, done, seen, 7))
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
