"""One enterprise's slow receivers cost that enterprise, never another's deliveries."""
from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from service.config import Config
from tests.helpers import make_token, wait_until
from tests.webhook_receiver import Receiver

SLOW = 5.0  # seconds the noisy enterprise's receiver takes to answer (the took 8)


@pytest.fixture
def db_dsn(own_db):
    return own_db  # no other test's subscriptions in this database


@pytest.fixture
def config(config):
    # The defaults (16 deliveries in flight, 8 per enterprise, 20 subscriptions each); the
    # receivers are on loopback, opened as an operator would.
    return config.with_(webhook_timeout_seconds=SLOW + 5, webhook_allowed_networks=("127.0.0.0/8",))


@pytest.fixture
async def receivers():
    slow, fast = await Receiver(slow_seconds=SLOW).start(), await Receiver().start()
    yield slow, fast
    await slow.close()
    await fast.close()


async def test_slow_receivers_do_not_delay_another_enterprises_delivery(api, db, receivers):
    slow, fast = receivers
    quiet = api.with_token(await make_token(db, "quiet-enterprise"))
    for _ in range(16):
        await api.post("/webhooks/", {"url": f"{slow.url}/slow"})
    await quiet.post("/webhooks/", {"url": f"{fast.url}/ok"})
    await api.run((await api.pipeline())["id"])  # 16 slow deliveries (at least)
    await wait_until(lambda: slow.arrived >= 8, what="the noisy enterprise's share in flight")
    await quiet.run((await quiet.pipeline())["id"])
    await fast.wait_for(lambda: fast.received, 30)
    first = fast.received[0]
    lag = first.at - datetime.fromisoformat(first.payload["timestamp"]).timestamp()
    assert lag < 1.0, f"the quiet enterprise's delivery took {lag:.2f}s"
    assert slow.arrived == 8, "the noisy enterprise had more than its share in flight"


async def test_subscriptions_per_enterprise_are_capped(aiohttp_client, config, db, token):
    from service.web.app import create_app
    from tests.helpers import Api

    client = await aiohttp_client(create_app(config.with_(webhook_max_per_enterprise=3)))
    api = Api(client, token)
    url = {"url": "http://8.8.8.8/hook"}
    # Concurrent creates: the cap holds (one create at a time per enterprise).
    answers = await asyncio.gather(*(api.call("POST", "/webhooks/", (200, 409), json=url)
                                     for _ in range(5)))
    assert sorted("secret" in a for a in answers) == [False, False, True, True, True]
    refused = await api.post("/webhooks/", url, status=409)
    assert refused == {"limit": 3}
    other = Api(client, await make_token(db, "another-enterprise"))
    await other.post("/webhooks/", url)  # another enterprise is not counted against it
    listed = (await api.get("/webhooks/"))["results"]
    assert len(listed) == 3
    await api.delete(f"/webhooks/{listed[0]['id']}/")
    await api.post("/webhooks/", url)
    uncapped = Api(await aiohttp_client(create_app(config.with_(webhook_max_per_enterprise=0))),
                   token)
    await uncapped.post("/webhooks/", url)  # 0: no cap
    assert (await uncapped.get("/webhooks/"))["count"] == 4


def test_fairness_settings():
    config = Config.from_env({})
    assert (config.webhook_max_per_enterprise, config.webhook_concurrency_per_enterprise) == (20, 8)
    config = Config.from_env({"WEBHOOK_MAX_PER_ENTERPRISE": "5",
                              "WEBHOOK_CONCURRENCY_PER_ENTERPRISE": "2"})
    assert (config.webhook_max_per_enterprise, config.webhook_concurrency_per_enterprise) == (5, 2)


async def test_pings_are_capped_per_enterprise_and_cost_no_one_else(api, db, receivers):
    slow, fast = receivers
    hooks = [await api.post("/webhooks/", {"url": f"{slow.url}/slow"}) for _ in range(3)]
    pings = [asyncio.create_task(api.post(f"/webhooks/{h['id']}/ping/")) for h in hooks[:2]]
    await wait_until(lambda: slow.arrived >= 2, what="two pings at the slow receiver")
    refused = await api.post(f"/webhooks/{hooks[2]['id']}/ping/", status=429)
    assert refused["retry_after"] >= 1 and api.last.headers["Retry-After"]
    quiet = api.with_token(await make_token(db, "quiet-pinger"))
    mine = await quiet.post("/webhooks/", {"url": f"{fast.url}/ok"})
    assert (await quiet.post(f"/webhooks/{mine['id']}/ping/"))["delivered"] is True
    assert all(p["delivered"] for p in await asyncio.gather(*pings))
    assert (await api.post(f"/webhooks/{hooks[2]['id']}/ping/"))["delivered"] is True
