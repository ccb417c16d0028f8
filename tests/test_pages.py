"""The auditors' pages (/ui/), server side: sessions, HTML content, escaping, scopes."""
from __future__ import annotations

import asyncio
import html
import re
from urllib.parse import quote

from markupsafe import escape
from yarl import URL

from tests.helpers import make_token, origin, sign_in

EVIL = "<script>alert('x')</script>"


async def page(client, path: str, status: int = 200) -> str:
    resp = await client.get(path, allow_redirects=False)
    text = await resp.text()
    assert resp.status == status, text
    if status == 200:
        assert resp.content_type == "text/html"
        assert "Traceback" not in text
    return text


def run_url(run: dict) -> str:
    return f"/ui/pipelines/{run['pipeline_id']}/runs/{run['id']}"


async def test_every_page_redirects_to_sign_in_without_a_session(client, api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    for path in ("/ui/runs", run_url(run), run_url(run) + "/export?format=csv",
                 "/ui/activity", "/ui/activity/updates?after=0", "/ui/activity/export"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        location = URL(resp.headers["Location"])
        assert location.path == "/ui/login" and location.query["next"] == path, path
    assert "Sign in" in await page(client, "/ui/login")
    assert "<label for=\"token\">" in await page(client, "/ui/login")


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_clears_it(client, token):
    resp = await sign_in(client, token)
    assert resp.headers["Location"] == "/ui/runs"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    assert token not in cookie  # encrypted
    assert "<h1>Runs</h1>" in await page(client, "/ui/runs")
    resp = await client.post("/ui/logout", headers=origin(client), allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/login"
    await page(client, "/ui/runs", 303)


async def test_sign_in_refuses_unknown_tokens_and_tokens_without_runs_read(client, db, enterprise):
    text = await (await sign_in(client, "not-a-token", 401)).text()
    assert "Unknown or revoked token." in text
    audit_only = await make_token(db, enterprise, scopes=("audit:read",))
    text = await (await sign_in(client, audit_only, 401)).text()
    assert "lacks the scope runs:read" in text
    await page(client, "/ui/runs", 303)


async def test_the_api_never_accepts_the_session_cookie(client, api, token):
    await sign_in(client, token)
    assert "<h1>Runs</h1>" in await page(client, "/ui/runs")  # the cookie works on /ui/
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/ui/runs"))
    assert cookie  # ...and is sent along with the API calls below, where it is ignored
    for path in ("/runs/", "/events/", "/events/export/?format=csv"):
        resp = await client.get("/pipelines/v0" + path,
                                headers={"Cookie": "; ".join(f"{k}={v.value}"
                                                             for k, v in cookie.items())})
        body = await resp.json()
        assert resp.status == 401 and body["code"] == 401, path


async def test_runs_page_lists_filters_and_escapes_names(client, api, token):
    evil = await api.pipeline(name=EVIL, stages=[EVIL])
    plain = await api.pipeline(name="plain")
    bad = await api.run(evil["id"])
    await api.move(bad, "running")
    await api.run(plain["id"])
    await sign_in(client, token)
    text = await page(client, "/ui/runs")
    assert EVIL not in text and str(escape(EVIL)) in text
    assert text.count('href="/ui/pipelines/') == 2
    assert 'aria-label="pending 1, running 1"' in text  # the status bar, in words
    text = await page(client, "/ui/runs?status=running&pipeline_name=&created_after=&ordering=")
    assert text.count('href="/ui/pipelines/') == 1 and run_url(bad) in text
    text = await page(client, "/ui/runs?pipeline_name=plain")
    assert text.count('href="/ui/pipelines/') == 1 and run_url(bad) not in text
    text = await page(client, "/ui/runs?created_after=2000-01-01&created_before=2000-01-02")
    assert "No run matches." in text
    text = await page(client, "/ui/runs?status=nonsense", 400)
    assert "unknown status" in text and "<h1>400" in text


async def test_runs_page_pages_by_cursor(client, api, token):
    pipeline = await api.pipeline()
    made = [await api.run(pipeline["id"]) for _ in range(3)]
    await sign_in(client, token)
    first = await page(client, "/ui/runs?limit=2")
    following = html.unescape(re.search(r'<a href="([^"]+)" rel="next">', first).group(1))
    second = await page(client, following)
    assert run_url(made[0]) in second and run_url(made[0]) not in first
    assert run_url(made[2]) in first and "First page" in second


async def test_run_page_shows_timeline_history_and_past_views(client, api, token):
    pipeline = await api.pipeline(name=EVIL, stages=("build", "test"))
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
    await api.put(f"/runs/{run['id']}/stageruns/{stage_runs[0]['id']}/",
                  {"status": "running"})
    history = (await api.get(f"/pipelines/{pipeline['id']}/runs/{run['id']}/events/"))["results"]
    await sign_in(client, token)
    text = await page(client, run_url(run))
    assert EVIL not in text
    assert text.count('<g class="lane"') == 3  # the run and its two stage runs
    assert "Past view" not in text
    for event in history:
        assert f'<tr data-version="{event["version"]}">' in text
    # As of the second event: the run had just started, no stage run had moved.
    at = history[1]["occurred_at"]
    past = await page(client, run_url(run) + "?as_of=" + quote(at))
    assert "Past view" in past and 'data-version="3"' not in past
    assert past.count('data-status="running"') == 1  # the run's lane only
    now = text.count('data-status="running"')
    assert now == 2  # the run's and the first stage run's
    await page(client, run_url(run) + "?as_of=2000-01-01T00:00:00Z", 404)
    assert "did not exist" in await page(client, run_url(run) + "?as_of=2000-01-01", 404)
    await page(client, run_url(run) + "?as_of=yesterday", 400)


async def test_a_deleted_run_is_shown_from_its_events(client, api, token):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    await api.delete(f"/pipelines/{pipeline['id']}/runs/{run['id']}/")
    await sign_in(client, token)
    text = await page(client, run_url(run))
    assert "was <strong>deleted</strong>" in text and "st-deleted" in text
    assert 'data-version="3"' in text and "run.deleted" in text


async def test_pages_check_scopes_and_tenancy(client, api, db, enterprise):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    reader = await make_token(db, enterprise, scopes=("runs:read",))
    await sign_in(client, reader)
    await page(client, "/ui/runs")
    assert "needs a token with the scope audit:read" in await page(client, run_url(run), 403)
    await page(client, "/ui/activity", 403)
    stranger = await make_token(db, enterprise + "-other")
    await sign_in(client, stranger)
    await page(client, run_url(run), 404)
    await page(client, "/ui/pipelines/nope/runs/nope", 404)


async def test_activity_is_newest_first_filtered_and_follows_new_events(client, api, token):
    pipeline = await api.pipeline(name=EVIL)
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    await sign_in(client, token)
    text = await page(client, "/ui/activity")
    assert EVIL not in text
    positions = [int(p) for p in re.findall(r'<tr data-position="(\d+)">', text)]
    assert len(positions) == 2 and positions == sorted(positions, reverse=True)
    text = await page(client, "/ui/activity?type=run.created&actor=tester")
    assert len(re.findall(r"<tr data-position=", text)) == 1
    text = await page(client, "/ui/activity?actor=nobody")
    assert "No events." in text
    # Live: a long-poll for what is newer answers when the next event lands.
    poll = asyncio.create_task(client.get(f"/ui/activity/updates?after={positions[0]}"))
    # Either order holds: a poll started after the event finds it at once.
    await api.move(run, "waiting")
    resp = await asyncio.wait_for(poll, 30)
    rows = await resp.text()
    assert resp.status == 200 and rows.count("<tr data-position=") == 1
    assert "running → waiting" in rows
    assert int(resp.headers["X-Feed-Top"]) > positions[0]


async def test_session_secret_comes_from_the_environment(aiohttp_client, config, token):
    from service.config import Config
    from service.web.app import create_app

    assert Config.from_env({"SESSION_SECRET": "s3cret"}).session_secret == "s3cret"
    assert Config.from_env({}).session_secret is None
    # Two processes with one secret (workers) read each other's cookies; another key cannot.
    one = await aiohttp_client(create_app(config.with_(session_secret="s3cret")))
    two = await aiohttp_client(create_app(config.with_(session_secret="s3cret")))
    other = await aiohttp_client(create_app(config.with_(session_secret="different")))
    resp = await sign_in(one, token)
    cookie = resp.cookies["pipeline_runs_session"].value
    for client, status in ((two, 200), (other, 303)):
        resp = await client.get("/ui/runs", allow_redirects=False,
                                headers={"Cookie": f"pipeline_runs_session={cookie}"})
        assert resp.status == status


async def test_pages_use_only_their_own_assets(client, api, token):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await sign_in(client, token)
    for path in ("/ui/login", "/ui/runs", run_url(run), "/ui/activity"):
        text = await page(client, path)
        assert not re.search(r'(src|href)="(https?:)?//', text), path  # no CDN, works offline
        for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', text):
            resp = await client.get(asset)
            assert resp.status == 200, asset
    assert (await client.get("/ui/static/ui.css")).content_type == "text/css"
