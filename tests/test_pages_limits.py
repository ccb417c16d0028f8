"""The pages spend their token's limits exactly as the API does: one rate bucket, one cap of
open waits, and a 429 page saying when to retry."""
from __future__ import annotations

import asyncio
import re

from service.store import tokens as token_store
from service.web.keys import WAIT_CAP
from tests.helpers import Api, token_id, wait_until
from tests.helpers import sign_in


async def limited_token(db, enterprise: str, rate: int) -> str:
    _, token = await token_store.create_token(db, enterprise, "pages", list(
        token_store.DEFAULT_SCOPES), rate_limit=rate)
    return token


async def test_pages_share_the_token_s_rate_limit(client, db, enterprise):
    token = await limited_token(db, enterprise, 5)  # 5/s, bursts of 10
    await sign_in(client, token)
    answers = [await client.get("/ui/runs", allow_redirects=False) for _ in range(20)]
    statuses = [r.status for r in answers]
    assert statuses.count(200) >= 10 and statuses[-1] == 429, statuses
    refused = answers[-1]
    assert refused.content_type == "text/html"
    text = await refused.text()
    retry = int(refused.headers["Retry-After"])
    assert retry >= 1 and f"Try again in {retry} s" in text
    assert "RateLimit-Policy" in refused.headers
    # The same bucket as the API's: the token is refused there too.
    await Api(client, token).get("/runs/", status=429)


async def test_live_updates_and_page_exports_count_against_the_wait_cap(client, db, enterprise,
                                                                       config):
    token = await limited_token(db, enterprise, 0)  # no rate limit: only the cap is tested
    me, cap = await token_id(db, token), client.server.app[WAIT_CAP]
    await sign_in(client, token)
    top = re.search(r'data-top="(\d+)"', await (await client.get("/ui/activity")).text())
    updates = f"/ui/activity/updates?after={top.group(1) if top else 0}"
    polls = [asyncio.create_task(client.get(updates)) for _ in range(config.max_waits_per_token)]
    try:
        await wait_until(lambda: cap.open(me) == config.max_waits_per_token, 20,
                         "the live updates to hold the token's wait slots")
        for path in (updates, "/ui/activity/export?format=csv"):
            refused = await client.get(path)
            assert refused.status == 429, await refused.text()
            assert refused.content_type == "text/html"
            assert "Retry-After" in refused.headers
    finally:
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
