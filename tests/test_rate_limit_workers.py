"""The rate limit with `serve --workers 2`: each worker keeps its own buckets (docs/rate-limits.md)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import make_token, as_runtime
from tests.processes import ROOT, children, free_port, listening, ready, wait_for

BURST, RATE = 4, 1


@pytest.fixture
def db_dsn(own_db):
    return own_db


def _both_listen(pid: int, port: int) -> bool:
    """Both workers started and each listening: before that the kernel gives every
    connection to the one that is, and the test would see one bucket."""
    workers = children(pid)
    return len(workers) == 2 and listening(workers, port) == workers


def _get(url: str, token: str) -> tuple[int, dict]:
    """One request on a connection of its own (the kernel picks the worker per connection)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


async def test_each_worker_limits_a_token_on_its_own(db, db_dsn, enterprise, tmp_path):
    """RATE 1/s, bursts of 4, 2 workers: a token gets at most 2 x (4 + 1/s), and more than
    one worker's share (both answer: connections are spread over them)."""
    token = await make_token(db, enterprise)
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "DATABASE_URL": as_runtime(db_dsn), "LOG_FORMAT": "text",
           "SHUTDOWN_TIMEOUT": "2",
           "RATE_LIMIT_RPS": str(RATE), "RATE_LIMIT_BURST": str(BURST)}
    loop = asyncio.get_running_loop()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            up = await loop.run_in_executor(
                None, lambda: wait_for(lambda: _both_listen(proc.pid, port) and ready(port)))
            assert up, log_path.read_text()
            url = f"http://127.0.0.1:{port}/pipelines/v0/pipelines/"
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                answers = await asyncio.gather(*(
                    loop.run_in_executor(pool, _get, url, token) for _ in range(60)))
            took = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    statuses = [status for status, _ in answers]
    allowed = statuses.count(200)
    assert set(statuses) == {200, 429}, statuses
    per_worker = BURST + RATE * took + 1
    assert allowed <= 2 * per_worker, (allowed, took)
    assert allowed > BURST, (allowed, took)  # not one bucket for the whole host
    for status, headers in answers:
        assert headers["RateLimit-Policy"] == f'"token";q={BURST};w={BURST // RATE}'
        assert "RateLimit" in headers
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
