"""The real service process: SIGKILL under load loses no acknowledged write; SIGTERM drains.

Each test runs `python -m service serve` on a database of its own (own_db) and talks to it
over HTTP, as a client would.
"""
from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid

import aiohttp
import asyncpg
import pytest

from tests.helpers import lock_waiters, make_token, wait_until
from tests.processes import MOUNT, ROOT, Service


SHUTDOWN_BOUND = 15.0  # seconds from SIGTERM to exit, with requests in flight: well under
# the 25 s long poll it must cut short, and under SHUTDOWN_TIMEOUT (a loaded machine is slow)


@pytest.fixture
def services(tmp_path):
    started: list[Service] = []

    def make(dsn: str, **env: str) -> Service:
        service = Service(dsn, tmp_path, **env)
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


async def _token(dsn: str, enterprise: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await make_token(conn, enterprise)
    finally:
        await conn.close()


async def _in_flight(url: str, at_least: int) -> bool:
    """Whether the service is handling that many requests now (its /metrics gauge), this
    scrape excluded."""
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(url + "/metrics") as resp:
            text = await resp.text()
    found = re.search(r"^pipeline_runs_http_requests_in_flight (\S+)$", text, re.M)
    return float(found.group(1)) - 1 >= at_least


async def _call(session, method: str, url: str, **kw) -> tuple[int, dict]:
    """One request; the envelope must be complete whatever the status."""
    async with session.request(method, url, **kw) as resp:
        body = await resp.json()
        assert set(body) == {"code", "message", "content"} and body["code"] == resp.status
        return resp.status, body["content"]


async def _refused(url: str) -> bool:
    """Whether a fresh connection to `url` is refused (the service stopped accepting)."""
    async with aiohttp.ClientSession() as fresh:
        try:
            async with fresh.get(url) as resp:
                await resp.read()
        except aiohttp.ClientConnectionError:
            return True
    return False


LIFE = ("running", "waiting", "running", "complete")


async def test_sigkill_under_load_loses_no_acknowledged_write(own_db, services):
    service = await services(own_db, TIMEOUT_SWEEP_SECONDS="3600").start()
    headers = {"Authorization": f"Bearer {await _token(own_db, 'crash')}"}
    acked: dict[str, tuple[int, str]] = {}  # run id -> the last acknowledged (version, status)
    refused: list[tuple[int, dict]] = []

    async with aiohttp.ClientSession(service.url + MOUNT + "/", headers=headers) as session:
        _, pipeline = await _call(session, "POST", "pipelines/", json={
            "name": "load", "stages": [{"name": "a"}, {"name": "b"}]})
        runs_url = f"pipelines/{pipeline['id']}/runs/"

        async def worker() -> None:
            try:
                while True:
                    status, run = await _call(session, "POST", runs_url, json={})
                    if status != 200:
                        refused.append((status, run))
                        continue
                    acked[run["id"]] = (run["version"], run["status"])
                    for target in LIFE:
                        status, moved = await _call(session, "PUT", f"{runs_url}{run['id']}/",
                                                    json={"status": target})
                        if status != 200:
                            refused.append((status, moved))
                            break
                        acked[run["id"]] = (moved["version"], moved["status"])
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the process is gone: whatever was in flight is unacknowledged

        workers = [asyncio.create_task(worker()) for _ in range(8)]
        await wait_until(lambda: len(acked) >= 30, 60,
                         what="30 acknowledged changes")  # mid-load, whatever the speed
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait()
        await asyncio.wait_for(asyncio.gather(*workers), 10)
    assert refused == []
    assert len(acked) >= 30, len(acked)
    print(f"{len(acked)} runs and {sum(v for v, _ in acked.values())} versions acknowledged "
          "before SIGKILL")

    conn = await asyncpg.connect(own_db)
    try:
        # Every run's events are versions 1..n, and its projection row is at version n.
        rows = await conn.fetch("""
            SELECT e.run_id, array_agg(e.version ORDER BY e.version) AS versions,
                   array_agg(e.to_status ORDER BY e.version) AS statuses, r.version
            FROM run_events e LEFT JOIN pipeline_runs r
              ON r.enterprise_id = e.enterprise_id AND r.id = e.run_id
            WHERE e.enterprise_id = 'crash' GROUP BY e.run_id, r.version""")
    finally:
        await conn.close()
    stored = {str(r["run_id"]): r for r in rows}
    for row in rows:
        assert row["versions"] == list(range(1, len(row["versions"]) + 1)), row
        assert row["version"] == len(row["versions"]), row
    for run_id, (version, status) in acked.items():
        assert run_id in stored, f"acknowledged run {run_id} is missing"
        assert len(stored[run_id]["versions"]) >= version, (run_id, version)
        assert stored[run_id]["statuses"][version - 1] == status, (run_id, version, status)

    verify = subprocess.run([sys.executable, "-m", "service", "verify"], cwd=ROOT,
                            env=service.env, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert " 0 drifted" in verify.stdout
    assert ": 0 broken" in verify.stdout  # every enterprise's hash chain survived too

    # The restarted service serves the same data and keeps going.
    again = await services(own_db, TIMEOUT_SWEEP_SECONDS="3600").start()
    async with aiohttp.ClientSession(again.url + MOUNT + "/", headers=headers) as session:
        run_id, (version, _) = next(iter(acked.items()))
        status, run = await _call(session, "GET", f"{runs_url}{run_id}/")
        assert status == 200 and run["version"] >= version
        status, created = await _call(session, "POST", runs_url, json={})
        assert status == 200 and created["run_number"] == len(stored) + 1  # no lost number


async def test_sigterm_drains_in_flight_requests_and_exits_0(own_db, services):
    # A sweeper that is busy at shutdown, too.
    service = await services(own_db, TIMEOUT_SWEEP_SECONDS="0.2", SHUTDOWN_TIMEOUT="20",
                             METRICS_ON_API_PORT="on").start()  # _in_flight reads it
    headers = {"Authorization": f"Bearer {await _token(own_db, 'drain')}"}
    async with aiohttp.ClientSession(service.url + MOUNT + "/", headers=headers) as session:
        _, pipeline = await _call(session, "POST", "pipelines/", json={
            "name": "p", "stages": [{"name": "a"}]})
        _, run = await _call(session, "POST", f"pipelines/{pipeline['id']}/runs/", json={})
        _, idle = await _call(session, "POST", f"pipelines/{pipeline['id']}/runs/", json={})
        _, feed = await _call(session, "GET", "events/")
        polled = f"events/?run_id={idle['id']}&after={feed['next_after']}"  # nothing will come

        locker = await asyncpg.connect(own_db)  # holds the run's row: the PUT waits on it
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM pipeline_runs WHERE id = $1 FOR UPDATE",
                                 uuid.UUID(run["id"]))
            put = asyncio.create_task(_call(session, "PUT",
                                            f"pipelines/{pipeline['id']}/runs/{run['id']}/",
                                            json={"status": "running"}))
            short_poll = asyncio.create_task(_call(session, "GET", polled + "&wait=3"))
            long_poll = asyncio.create_task(_call(session, "GET", polled + "&wait=25"))
            # All three in the service's hands: the PUT waiting for the row, the polls for events.
            await wait_until(lambda: lock_waiters(locker), what="the PUT to wait for the row")
            await wait_until(lambda: _in_flight(service.url, at_least=3),
                             what="the three requests in flight")
            assert not (put.done() or short_poll.done() or long_poll.done())

            sent = time.monotonic()
            service.proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: _refused(service.url + "/health/live"), 15,
                             what="the service to stop accepting")  # the PUT still waits
            assert not put.done()
            await lock.rollback()
        finally:
            await locker.close()

        status, moved = await put
        assert status == 200 and moved["status"] == "running"  # finished, not cut off
        for poll in (short_poll, long_poll):
            status, content = await poll
            assert status == 200 and content["results"] == []
        code = await asyncio.to_thread(service.proc.wait, SHUTDOWN_BOUND + 5)
    took = time.monotonic() - sent
    print(f"SIGTERM to exit: {took:.2f}s")
    assert code == 0, service.stderr()
    assert took < SHUTDOWN_BOUND, took
    err = service.stderr()
    for bad in ("Traceback", "Task was destroyed", "Unclosed", "never retrieved", "terminating it"):
        assert bad not in err, err
