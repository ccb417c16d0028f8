"""Per-token rate limit: token bucket, 429 with Retry-After, IETF RateLimit header fields."""
from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import pytest

from service.web.handlers import root  # / and /favicon.ico: no token, no rate limit
from tests.helpers import Api, as_runtime
from service.config import Config
from service.store import tokens as token_store
from service.web.app import create_app

REPO = Path(__file__).resolve().parent.parent
POLICY = re.compile(r'^"token";q=(\d+);w=(\d+)$')
STATE = re.compile(r'^"token";r=(\d+);t=(\d+)$')


@pytest.fixture
def config(db_dsn) -> Config:
    # 1 request/s, bursts of 3: a handful of quick requests goes over.
    return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=5, token_cache_seconds=60,
                  rate_limit_rps=1, rate_limit_burst=3)


async def _burst(api: Api, n: int) -> tuple[list, float]:
    """n requests one after the other: (status, headers) each, and the seconds taken."""
    answers = []
    started = time.monotonic()
    for _ in range(n):
        resp = await api.client.get(api.url("/pipelines/"),
                                    headers={"Authorization": f"Bearer {api.token}"})
        body = await resp.json()
        assert body["code"] == resp.status
        answers.append((resp.status, resp.headers, body))
    return answers, time.monotonic() - started


async def test_over_the_limit_is_a_429_with_retry_after(api):
    answers, took = await _burst(api, 12)
    statuses = [s for s, _, _ in answers]
    assert statuses[:3] == [200, 200, 200], statuses  # the burst
    allowed = statuses.count(200)
    assert allowed <= 3 + took * 1 + 1, (statuses, took)  # burst + refill at 1/s
    assert 429 in statuses, (statuses, took)
    status, headers, body = next(a for a in answers if a[0] == 429)
    assert body["message"].startswith("rate limit of this token exceeded")
    assert body["content"] == {"retry_after": int(headers["Retry-After"])}
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert POLICY.match(headers["RateLimit-Policy"]).groups() == ("3", "3")
    assert STATE.match(headers["RateLimit"]).group(1) == "0"


async def test_every_authenticated_answer_carries_the_ratelimit_fields(api):
    first = await api.client.get(api.url("/pipelines/"),
                                 headers={"Authorization": f"Bearer {api.token}"})
    assert first.status == 200
    assert first.headers["RateLimit-Policy"] == '"token";q=3;w=3'
    remaining, reset = map(int, STATE.match(first.headers["RateLimit"]).groups())
    assert remaining == 2 and reset == 1
    # Errors too: a 404 of an authenticated request says where the limit stands.
    missing = await api.client.get(api.url("/pipelines/00000000-0000-0000-0000-000000000000/"),
                                   headers={"Authorization": f"Bearer {api.token}"})
    assert missing.status == 404
    assert int(STATE.match(missing.headers["RateLimit"]).group(1)) <= 1
    # An export, whose headers go out before its handler returns, says it too.
    export = await api.client.get(api.url("/events/export/?format=ndjson"),
                                  headers={"Authorization": f"Bearer {api.token}"})
    assert export.status == 200 and export.headers["RateLimit-Policy"] == '"token";q=3;w=3'
    assert int(STATE.match(export.headers["RateLimit"]).group(1)) <= 1
    await export.read()
    # An unauthenticated answer has no token, hence no limit.
    anonymous = await api.client.get(api.url("/pipelines/"))
    assert anonymous.status == 401 and "RateLimit" not in anonymous.headers


async def test_a_token_s_own_rate_replaces_the_default(api, db, enterprise):
    _, unlimited = await token_store.create_token(db, enterprise, "batch", rate_limit=0)
    _, faster = await token_store.create_token(db, enterprise, "fast", rate_limit=50)
    answers, _ = await _burst(api.with_token(unlimited), 12)
    assert [s for s, _, _ in answers] == [200] * 12
    assert all("RateLimit" not in h for _, h, _ in answers)
    answers, _ = await _burst(api.with_token(faster), 12)
    assert [s for s, _, _ in answers] == [200] * 12
    # The same seconds' worth of burst as the default (3 / 1 = 3 s): 150 at 50/s.
    assert answers[0][1]["RateLimit-Policy"] == '"token";q=150;w=3'
    # Each token has its own bucket: the default token still has its full burst.
    answers, _ = await _burst(api, 3)
    assert [s for s, _, _ in answers] == [200] * 3


async def test_rate_limit_zero_turns_it_off(aiohttp_client, db_dsn, token):
    app = create_app(Config(database_url=as_runtime(db_dsn), pool_min=1, rate_limit_rps=0))
    api = Api(await aiohttp_client(app), token)
    answers, _ = await _burst(api, 12)
    assert [s for s, _, _ in answers] == [200] * 12
    assert all("RateLimit" not in h for _, h, _ in answers)


async def test_create_token_stores_its_rate_limit(db, db_dsn, enterprise):
    env = {**os.environ, "DATABASE_URL": as_runtime(db_dsn), "LOG_FORMAT": "text"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "create-token", "--enterprise", enterprise,
        "--name", "limited", "--rate-limit", "7", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "7 requests/s" in out.decode()
    assert await db.fetchval("SELECT rate_limit FROM api_tokens WHERE enterprise_id = $1 "
                             "AND name = 'limited'", enterprise) == 7
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "create-token", "--enterprise", enterprise,
        "--name", "bad", "--rate-limit", "-1", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "must be 0 or more" in err.decode()


async def test_openapi_documents_429_and_the_headers(api):
    doc = await (await api.client.get("/api/docs/swagger.json")).json()
    for path, operations in doc["paths"].items():
        if path.startswith("/health/") or path in root.PATHS:
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "429" in responses, (method, path)
            assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= set(
                responses["429"]["headers"]), (method, path)
            assert {"RateLimit", "RateLimit-Policy"} <= set(responses["200"]["headers"])


async def test_over_the_limit_changes_nothing(api, db, enterprise):
    pipeline = await api.pipeline()
    created, refused = 0, 0
    while not refused:
        resp = await api.client.post(api.url(f"/pipelines/{pipeline['id']}/runs/"), json={},
                                     headers={"Authorization": f"Bearer {api.token}"})
        assert resp.status in (200, 429), await resp.text()
        created, refused = created + (resp.status == 200), resp.status == 429
    assert created <= 3
    assert await db.fetchval("SELECT count(*) FROM pipeline_runs WHERE enterprise_id = $1",
                             enterprise) == created


async def test_with_a_delay_a_request_over_the_rate_waits_for_its_turn(aiohttp_client, db_dsn,
                                                                      token):
    # RATE_LIMIT_DELAY_MS: over the rate, a request waits for the bucket (up to the delay)
    # instead of a 429 at once, so a client that sends again as soon as it is answered is
    # slowed to the rate; further over, still a 429.
    config = Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=5, token_cache_seconds=60,
                    rate_limit_rps=10, rate_limit_burst=1, rate_limit_delay_ms=250)
    api = Api(await aiohttp_client(create_app(config)), token)
    answers, took = await _burst(api, 4)  # one at a time: each waits ~0.1 s for its turn
    assert [s for s, _, _ in answers] == [200] * 4
    assert took >= 0.25, took  # 3 turns of 0.1 s after the burst of 1
    assert all(STATE.match(h["RateLimit"]) for _, h, _ in answers)
    # Sent at once, 8 need 0.7 s of turns: those beyond the 0.25 s delay are refused.
    at_once = await asyncio.gather(*(api.client.get(
        api.url("/pipelines/"), headers={"Authorization": f"Bearer {token}"})
        for _ in range(8)))
    statuses = sorted(r.status for r in at_once)
    assert 200 in statuses and 429 in statuses, statuses
    assert statuses.count(200) <= 1 + 3 + 1, statuses  # the refill, plus 0.25 s of turns
