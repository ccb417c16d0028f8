"""Webhooks survive SIGKILL: every event is delivered at least once, in order per run."""
from __future__ import annotations

import asyncio
import random

import aiohttp
import asyncpg
import pytest

from tests.helpers import make_token
from tests.processes import MOUNT, Service
from tests.webhook_receiver import Receiver

ENTERPRISE = "ent-webhooks-crash"
ENV = {"WEBHOOK_TIMEOUT_SECONDS": "2", "WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,2,4,8,16",
       "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}  # the receiver is on loopback


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.close()


@pytest.fixture
def started(tmp_path):
    services: list[Service] = []
    yield services
    for service in services:
        service.stop()


async def _writer(session, url: str, pipeline_id: str, stop: asyncio.Event) -> int:
    """Runs through short lives until told to stop or the service goes away."""
    runs = 0
    try:
        while not stop.is_set():
            async with session.post(f"{url}/pipelines/{pipeline_id}/runs/", json={}) as resp:
                run = (await resp.json())["content"]
            for status in random.choice([("running", "complete"), ("cancelled",), ("queued",)]):
                async with session.put(f"{url}/pipelines/{pipeline_id}/runs/{run['id']}/",
                                       json={"status": status}) as resp:
                    await resp.read()
            runs += 1
    except (aiohttp.ClientError, OSError, TypeError):
        pass  # the service was killed under us
    return runs


async def test_sigkill_mid_burst_loses_no_delivery(own_db, receiver, started, tmp_path):
    conn = await asyncpg.connect(own_db)
    try:
        token = await make_token(conn, ENTERPRISE)
    finally:
        await conn.close()
    headers = {"Authorization": f"Bearer {token}"}
    first = await Service(own_db, tmp_path, **ENV).start()
    started.append(first)
    async with aiohttp.ClientSession(headers=headers) as session:
        url = first.url + MOUNT
        async with session.post(f"{url}/webhooks/", json={"url": f"{receiver.url}/ok"}) as resp:
            receiver.secret = (await resp.json())["content"]["secret"]
        async with session.post(f"{url}/pipelines/", json={"name": "p", "stages": [
                {"name": "build"}]}) as resp:
            pipeline_id = (await resp.json())["content"]["id"]
        stop = asyncio.Event()
        writers = [asyncio.create_task(_writer(session, url, pipeline_id, stop))
                   for _ in range(4)]
        await receiver.wait_for(lambda: len(receiver.received) >= 40)
        first.proc.kill()  # SIGKILL: mid-burst, deliveries in flight
        first.proc.wait()
        stop.set()
        await asyncio.gather(*writers)
    # Two workers from now on: their dispatchers share the queue.
    second = await Service(own_db, tmp_path, WORKERS="2", **ENV).start()
    started.append(second)
    async with aiohttp.ClientSession(headers=headers) as session:
        stop = asyncio.Event()
        more = asyncio.create_task(_writer(session, second.url + MOUNT, pipeline_id, stop))
        await receiver.wait_for(lambda: len({r.message_id for r in receiver.received}) >= 80,
                                120)
        stop.set()
        await more
    conn = await asyncpg.connect(own_db)
    try:
        stored = await conn.fetch("SELECT id, run_id, version FROM run_events "
                                  "WHERE enterprise_id = $1 ORDER BY position", ENTERPRISE)
    finally:
        await conn.close()
    wanted = {str(e["id"]) for e in stored}
    await receiver.wait_for(lambda: {r.message_id for r in receiver.received} >= wanted, 120)
    assert all(r.verified for r in receiver.received), "a signature did not verify"
    first_arrival: dict[str, list[int]] = {}
    seen: set[str] = set()
    for r in receiver.received:
        if r.message_id in seen:
            continue  # at least once: a resend carries the same webhook-id
        seen.add(r.message_id)
        event = r.payload["data"]["event"]
        first_arrival.setdefault(event["run_id"], []).append(event["version"])
    for run_id, versions in first_arrival.items():
        assert versions == list(range(1, len(versions) + 1)), (run_id, versions)
    assert len(stored) >= 80 and len(first_arrival) >= 10
    print(f"{len(stored)} events, {len(receiver.received)} deliveries "
          f"({len(receiver.received) - len(wanted)} repeated)")
