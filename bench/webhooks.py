"""`make bench`, webhooks: delivery throughput to a local receiver and lag p95 under writes.

A scratch database, the service (`python -m service serve`, WEBHOOKS=on), one subscription
to a receiver on loopback (tests/webhook_receiver.py, verifying every signature), and C
writers creating runs and moving them for S seconds. Reported: events written, deliveries
per second while writing and until the queue drained, and the lag from an event's
occurred_at to its arrival (p50, p95, max). With --noisy-hooks N, another enterprise
has N subscriptions to a receiver answering after --noisy-seconds and starts a run every
second meanwhile: the lag then shows what its slow receivers cost the measured one.

    .venv/bin/python bench/webhooks.py [--seconds 10] [--writers 8] [--workers 1]
                                       [--noisy-hooks 16 --noisy-seconds 8]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import scratchdb  # noqa: E402
from tests.webhook_receiver import Receiver  # noqa: E402

from service.store import meta  # noqa: E402
from service.store import tokens as token_store  # noqa: E402

MOUNT = "/pipelines/v0"
ENTERPRISE = "bench-webhooks"
NOISY = "bench-webhooks-noisy"  # --noisy-hooks: the enterprise with slow receivers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/health/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service did not become ready")
            await asyncio.sleep(0.1)


async def _writer(session, url: str, pipeline_id: str, until: float) -> int:
    events = 0
    while time.monotonic() < until:
        async with session.post(f"{url}/pipelines/{pipeline_id}/runs/", json={}) as resp:
            run = (await resp.json())["content"]
        for status in ("running", "complete"):
            async with session.put(f"{url}/pipelines/{pipeline_id}/runs/{run['id']}/",
                                   json={"status": status}) as resp:
                await resp.read()
        events += 4  # created, running, complete, and the derived outcome or stage moves
    return events


async def _noisy(url: str, token: str, slow: Receiver, args, until: float) -> None:
    """The other enterprise: --noisy-hooks subscriptions to a slow receiver, a run a second."""
    if not args.noisy_hooks:
        return
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for _ in range(args.noisy_hooks):
            async with session.post(f"{url}/webhooks/", json={"url": f"{slow.url}/slow"}) as r:
                assert r.status == 200, await r.text()
        async with session.post(f"{url}/pipelines/", json={"name": "noisy"}) as resp:
            pipeline_id = (await resp.json())["content"]["id"]
        while time.monotonic() < until:
            async with session.post(f"{url}/pipelines/{pipeline_id}/runs/", json={}) as resp:
                await resp.read()
            await asyncio.sleep(1.0)  # a steady trickle: the slow deliveries never run out


async def bench(dsn: str, args) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        await meta.migrate(conn)
        _, token = await token_store.create_token(conn, ENTERPRISE, "bench",
                                                  list(token_store.DEFAULT_SCOPES))
        _, noisy_token = await token_store.create_token(conn, NOISY, "bench",
                                                        list(token_store.DEFAULT_SCOPES))
    finally:
        await conn.close()
    receiver = await Receiver().start()
    slow = await Receiver(slow_seconds=args.noisy_seconds).start()
    port = _free_port()
    env = {**os.environ, **scratchdb.service_env(dsn), "LOG_LEVEL": "WARNING", "WEBHOOKS": "on",
           "WORKERS": str(args.workers),
           "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}  # the receiver is on loopback
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        await _ready(url)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(f"{url}{MOUNT}/webhooks/",
                                    json={"url": f"{receiver.url}/ok"}) as resp:
                receiver.secret = (await resp.json())["content"]["secret"]
            async with session.post(f"{url}{MOUNT}/pipelines/", json={"name": "bench"}) as resp:
                pipeline_id = (await resp.json())["content"]["id"]
            started = time.monotonic()
            until = started + args.seconds
            noisy = asyncio.create_task(_noisy(url + MOUNT, noisy_token, slow, args, until))
            await asyncio.gather(*(_writer(session, url + MOUNT, pipeline_id, until)
                                   for _ in range(args.writers)))
            await noisy
            written_in = time.monotonic() - started
            during = len(receiver.received)
        conn = await asyncpg.connect(dsn)
        try:
            total = await conn.fetchval("SELECT count(*) FROM run_events WHERE enterprise_id = $1",
                                        ENTERPRISE)
        finally:
            await conn.close()
        await receiver.wait_for(lambda: len({r.message_id for r in receiver.received}) >= total,
                                300)
        drained_in = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(30)
        await receiver.close()
        await slow.close()
    lags = sorted(r.at - datetime.fromisoformat(r.payload["timestamp"]).timestamp()
                  for r in receiver.received)
    return {"events": total, "deliveries": len(receiver.received),
            "verified": all(r.verified for r in receiver.received),
            "rate_during": during / written_in, "rate_overall": len(receiver.received) / drained_in,
            "lag_p50": statistics.median(lags), "lag_p95": lags[int(len(lags) * 0.95) - 1],
            "lag_max": lags[-1], "seconds": args.seconds, "writers": args.writers,
            "workers": args.workers, "noisy": (args.noisy_hooks, args.noisy_seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--noisy-hooks", type=int, default=0)
    parser.add_argument("--noisy-seconds", type=float, default=8)
    args = parser.parse_args(argv)
    with scratchdb.admin_dsn() as admin:
        name = f"bench_webhooks_{uuid.uuid4().hex[:8]}"
        asyncio.run(scratchdb.admin(admin, f'CREATE DATABASE "{name}"'))
        try:
            r = asyncio.run(bench(scratchdb.dsn_for(admin, name), args))
        finally:
            asyncio.run(scratchdb.admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"webhooks: {r['events']} events written in {r['seconds']:g}s by {r['writers']} "
          f"writers ({r['workers']} worker(s)); {r['deliveries']} deliveries, signatures "
          f"{'all valid' if r['verified'] else 'NOT all valid'}")
    if r["noisy"][0]:
        print(f"  meanwhile another enterprise: {r['noisy'][0]} subscriptions to a receiver "
              f"answering after {r['noisy'][1]:g}s")
    print(f"  delivered/s while writing {r['rate_during']:.0f}, until drained "
          f"{r['rate_overall']:.0f}; lag p50 {r['lag_p50'] * 1000:.0f} ms, "
          f"p95 {r['lag_p95'] * 1000:.0f} ms, max {r['lag_max'] * 1000:.0f} ms")
    return 0 if r["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
