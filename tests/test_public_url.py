"""List links (next/previous) point at PUBLIC_URL when it is set, whatever Host says."""
from __future__ import annotations

import pytest

from service.config import Config
from service.web.app import create_app

PUBLIC = "https://runs.example.com/base"
LISTS = ("/pipelines/v0/runs/?limit=1&offset=1", "/pipelines/v0/pipelines/?limit=1&offset=1",
         "/pipelines/v0/events/?limit=1")


async def _links(client, token: str, host: str) -> list[str]:
    found = []
    for path in LISTS:
        resp = await client.get(path, headers={"Authorization": f"Bearer {token}", "Host": host})
        body = await resp.json()
        assert resp.status == 200, body
        found += [body["content"][k] for k in ("next", "previous") if body["content"].get(k)]
    return found


async def _three_of_each(api) -> None:
    for _ in range(3):
        pipeline = await api.pipeline()
        await api.run(pipeline["id"])


async def test_links_come_from_public_url_not_from_the_host_header(aiohttp_client, config,
                                                                   api):
    await _three_of_each(api)
    client = await aiohttp_client(create_app(config.with_(public_url=PUBLIC)))
    links = await _links(client, api.token, "evil.example")
    assert len(links) == 5  # runs: next, previous; pipelines: next, previous; events: next
    for link in links:
        assert link.startswith(PUBLIC + "/pipelines/v0/") and "evil" not in link, link
    assert f"{PUBLIC}/pipelines/v0/runs/?limit=1&offset=2" in links


async def test_without_public_url_links_follow_the_request(client, api):
    # Documented (docs/security.md): unset, a link goes where the caller addressed us.
    await _three_of_each(api)
    links = await _links(client, api.token, "evil.example")
    assert links and all(link.startswith("http://evil.example/") for link in links)


def test_public_url_comes_from_the_environment_and_must_be_a_base_url():
    assert Config.from_env({}).public_url is None
    assert Config.from_env({"PUBLIC_URL": "https://x.example/"}).public_url == "https://x.example"
    for bad in ("x.example", "ftp://x.example", "https://x.example/?a=1", "https://"):
        with pytest.raises(ValueError, match="PUBLIC_URL"):
            Config.from_env({"PUBLIC_URL": bad})
