"""A noisy tenant (32 writers, 20 long-polls, a flood of unknown tokens) beside a quiet one:
every request of the quiet tenant answers 200. (Its p99 is measured by bench/run.py.)"""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.helpers import Api, as_runtime, make_token, wait_until
from service.config import Config

WRITERS, POLLS, FLOODERS, QUIET_REQUESTS = 32, 20, 16, 60


@pytest.fixture
def config(db_dsn) -> Config:
    return Config(database_url=as_runtime(db_dsn), pool_min=2, pool_max=10, token_cache_seconds=2)


async def test_a_quiet_tenant_is_served_beside_a_noisy_one(api, db, enterprise):
    quiet = api.with_token(await make_token(db, f"ent-{uuid.uuid4().hex[:12]}", "quiet"))
    quiet_run = await quiet.move(await quiet.run((await quiet.pipeline())["id"]), "running")
    pipelines = [(await api.pipeline(f"noisy-{i}"))["id"] for i in range(4)]
    pollers = [api.with_token(await make_token(db, enterprise, f"poller-{i}"))
               for i in range(POLLS // 5)]
    head = (await api.get("/events/"))["next_after"]
    stop = asyncio.Event()
    noise = {"writes": 0, "polls": 0, "unknown": 0}

    # The noise takes whatever it gets (a 503 when the machine is slow, a 429 over a cap):
    # only the quiet tenant's answers are asserted.
    async def writer(i: int) -> None:
        while not stop.is_set():
            run = await api.call("POST", f"/pipelines/{pipelines[i % len(pipelines)]}/runs/",
                                 (200, 503), json={})
            for status in ("running", "complete"):
                if run and "id" in run:
                    await api.call("PUT", f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/",
                                   (200, 409, 503), json={"status": status})
            noise["writes"] += 3

    async def poller(who: Api) -> None:
        after = head
        while not stop.is_set():
            page = await who.call("GET", f"/events/?after={after}&wait=20", (200, 429, 503))
            after = page["next_after"] if page and "next_after" in page else after
            noise["polls"] += 1

    async def flooder(i: int) -> None:
        n = 0
        while not stop.is_set():
            resp = await api.client.get(api.url("/pipelines/"),
                                        headers={"Authorization": f"Bearer bad-{i}-{n}"})
            assert resp.status == 401
            resp.release()
            n, noise["unknown"] = n + 1, noise["unknown"] + 1

    tasks = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
    tasks += [asyncio.create_task(poller(p)) for p in pollers for _ in range(5)]
    tasks += [asyncio.create_task(flooder(i)) for i in range(FLOODERS)]
    try:
        def noisy() -> bool:  # the noise is on, and none of it died
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            return noise["writes"] >= WRITERS and noise["unknown"] >= 100

        await wait_until(noisy, 60, what="the writers and flooders to be under way")
        seconds = []
        path = f"/pipelines/{quiet_run['pipeline_id']}/runs/{quiet_run['id']}/"
        for i in range(QUIET_REQUESTS):
            started = time.monotonic()
            if i % 3 == 2:
                status = "running" if i % 2 else "waiting"
                await quiet.put(path, {"status": status}, status=200)
            else:
                await quiet.get(path if i % 2 else "/pipelines/", status=200)
            seconds.append(time.monotonic() - started)
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    seconds.sort()
    print(f"quiet tenant: p50 {seconds[len(seconds) // 2] * 1000:.1f} ms, "
          f"p99 {seconds[int(len(seconds) * 0.99)] * 1000:.1f} ms; noise {noise}")
