"""Page sessions (/ui/): ended on the server at sign-out, bound to their token, Secure when
asked, refused from other sites, and every page under headers that keep other sites out."""
from __future__ import annotations

import base64
import hashlib

import aiohttp
import pytest
from cryptography.fernet import Fernet, InvalidToken
from yarl import URL

from service.config import Config
from service.web.app import create_app
from service.web.pages.session import COOKIE, PAGE_HEADERS, _key
from tests.helpers import make_token
from tests.processes import Service
from tests.helpers import origin, sign_in
from tests.test_pages import page, run_url

EVIL = "https://evil.example"


def cookie_of(resp) -> str:
    return resp.cookies[COOKIE].value


async def with_cookie(client, path: str, cookie: str):
    return await client.get(path, allow_redirects=False, headers={"Cookie": f"{COOKIE}={cookie}"})


def ended(resp) -> bool:
    """A redirect to the sign-in page that says the session ended."""
    location = URL(resp.headers.get("Location", ""))
    return (resp.status == 303 and location.path == "/ui/login"
            and location.query.get("ended") == "1")


async def test_a_cookie_saved_before_sign_out_no_longer_signs_in(client, token, db):
    saved = cookie_of(await sign_in(client, token))
    assert token not in saved  # the cookie holds a session id, never the token
    assert await db.fetchval("SELECT count(*) FROM ui_sessions") >= 1
    assert (await with_cookie(client, "/ui/runs", saved)).status == 200
    resp = await client.post("/ui/logout", headers=origin(client), allow_redirects=False)
    assert resp.status == 303
    resp = await with_cookie(client, "/ui/runs", saved)  # the copy, replayed
    assert ended(resp), resp.headers
    text = await page(client, resp.headers["Location"])
    assert "Your session ended" in text


async def test_signing_in_again_ends_the_session_it_replaces(client, token):
    first = cookie_of(await sign_in(client, token))
    second = cookie_of(await sign_in(client, token))
    client.session.cookie_jar.clear()  # each cookie alone, as a copy of it would be sent
    assert ended(await with_cookie(client, "/ui/runs", first))
    assert (await with_cookie(client, "/ui/runs", second)).status == 200


async def test_revoking_the_token_ends_its_sessions_at_once(client, db, enterprise):
    token = await make_token(db, enterprise, name="revoked-later")
    saved = cookie_of(await sign_in(client, token))
    assert (await with_cookie(client, "/ui/runs", saved)).status == 200
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1",
                     hashlib.sha256(token.encode()).digest())
    assert ended(await with_cookie(client, "/ui/runs", saved))


async def test_an_expired_session_ends(client, db, token):
    saved = cookie_of(await sign_in(client, token))
    await db.execute("UPDATE ui_sessions SET expires_at = now() - interval '1 second'")
    assert ended(await with_cookie(client, "/ui/runs", saved))


async def test_after_a_restart_without_session_secret_the_sign_in_page_says_so(
        aiohttp_client, config, token):
    before = await aiohttp_client(create_app(config))
    saved = cookie_of(await sign_in(before, token))
    after = await aiohttp_client(create_app(config))  # a new random key
    resp = await with_cookie(after, "/ui/runs", saved)
    assert ended(resp)
    assert "Your session ended" in await page(after, resp.headers["Location"])
    # Without any cookie, sign-in is just sign-in.
    resp = await after.get("/ui/runs", allow_redirects=False)
    assert resp.status == 303 and "ended" not in resp.headers["Location"]


async def test_the_cookie_key_is_derived_by_hkdf_not_a_bare_hash(aiohttp_client, config, token):
    app_config = config.with_(session_secret="s3cret")
    client = await aiohttp_client(create_app(app_config))
    saved = cookie_of(await sign_in(client, token)).encode()
    Fernet(base64.urlsafe_b64encode(_key(app_config))).decrypt(saved)
    bare = hashlib.sha256(b"s3cret").digest()  # the old key
    with pytest.raises(InvalidToken):
        Fernet(base64.urlsafe_b64encode(bare)).decrypt(saved)


@pytest.mark.parametrize("setting,public_url,secure", [
    (True, None, True), (False, "https://runs.example.com", False),
    (None, None, False),  # plain http, nothing said: the app alone follows the request
    (None, "https://runs.example.com", True),  # served over HTTPS behind a proxy
])
async def test_the_cookie_is_secure_as_configured(aiohttp_client, config, token, setting,
                                                  public_url, secure):
    client = await aiohttp_client(create_app(config.with_(session_cookie_secure=setting,
                                                          public_url=public_url)))
    headers = {"Origin": public_url} if public_url else origin(client)
    resp = await client.post("/ui/login", data={"token": token}, headers=headers,
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    cookie = resp.headers["Set-Cookie"]
    assert ("; Secure" in cookie) is secure, cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_session_cookie_secure_comes_from_the_environment():
    assert Config.from_env({}).session_cookie_secure is None  # serve: on; dev: off
    assert Config.from_env({"SESSION_COOKIE_SECURE": "on"}).session_cookie_secure is True
    assert Config.from_env({"SESSION_COOKIE_SECURE": "off"}).session_cookie_secure is False
    with pytest.raises(ValueError, match="SESSION_COOKIE_SECURE"):
        Config.from_env({"SESSION_COOKIE_SECURE": "maybe"})


CROSS_SITE = [{"Origin": EVIL}, {"Origin": "null"}, {"Referer": EVIL + "/ui/login"},
              {}, {"Origin": EVIL, "Referer": "{ours}/ui/login"}]


async def test_a_cross_site_form_cannot_sign_in(client, db, token):
    ours = str(client.make_url("/").origin())
    sessions = await db.fetchval("SELECT count(*) FROM ui_sessions")
    for headers in CROSS_SITE:
        headers = {k: v.format(ours=ours) for k, v in headers.items()}
        resp = await client.post("/ui/login", data={"token": token}, headers=headers,
                                 allow_redirects=False)
        text = await resp.text()
        assert resp.status == 403 and "not sent from this site" in text, (headers, text[:200])
        assert COOKIE not in resp.cookies
    assert await db.fetchval("SELECT count(*) FROM ui_sessions") == sessions
    # Our own pages' forms: by Origin, or by Referer from a browser that sends no Origin.
    resp = await client.post("/ui/login", data={"token": token}, allow_redirects=False,
                             headers={"Referer": ours + "/ui/login"})
    assert resp.status == 303


async def test_a_cross_site_form_cannot_sign_out(client, token):
    await sign_in(client, token)
    resp = await client.post("/ui/logout", headers={"Origin": EVIL}, allow_redirects=False)
    assert resp.status == 403
    await page(client, "/ui/runs")  # still signed in


async def test_behind_public_url_the_origin_must_be_it(aiohttp_client, config, token):
    public = "https://runs.example.com"
    client = await aiohttp_client(create_app(config.with_(public_url=public)))
    resp = await client.post("/ui/login", data={"token": token}, headers=origin(client),
                             allow_redirects=False)
    assert resp.status == 403  # the Host the request named is not where clients see us
    for same in (public, "HTTPS://Runs.Example.com:443"):  # one origin, however written
        resp = await client.post("/ui/login", data={"token": token}, headers={"Origin": same},
                                 allow_redirects=False)
        assert resp.status == 303, same
    resp = await client.post("/ui/login", data={"token": token}, allow_redirects=False,
                             headers={"Origin": "http://runs.example.com"})
    assert resp.status == 403  # plain http is another origin


async def test_every_page_answer_carries_the_security_headers(client, api, token):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    answers = [await client.get("/ui/runs", allow_redirects=False),  # redirect to sign-in
               await client.get("/ui/login"),
               await client.post("/ui/login", data={"token": token}, headers={"Origin": EVIL})]
    await sign_in(client, token)
    for path in ("/ui/runs", run_url(run), "/ui/activity", "/ui/static/ui.css",
                 "/ui/static/ui.js", run_url(run) + "/export?format=csv", "/ui/runs?limit=0",
                 "/ui/nope"):
        answers.append(await client.get(path, allow_redirects=False))
    for resp in answers:
        for name, value in PAGE_HEADERS.items():
            assert resp.headers.get(name) == value, (resp.url, resp.status, name)
    assert "frame-ancestors 'none'" in PAGE_HEADERS["Content-Security-Policy"]
    # The API keeps its own headers: no page policy on JSON answers.
    assert "Content-Security-Policy" not in (await client.get("/health/live")).headers


@pytest.mark.own_db  # serve migrates its database on start
async def test_serve_marks_the_cookie_secure_and_keeps_metrics_off_the_api_port(
        db_dsn, token, tmp_path):
    service = await Service(db_dsn, tmp_path).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(service.url + "/ui/login", data={"token": token},
                                    headers={"Origin": service.url},
                                    allow_redirects=False) as resp:
                assert resp.status == 303, await resp.text()
                assert "; Secure" in resp.headers["Set-Cookie"]
            async with session.get(service.url + "/metrics") as resp:
                assert resp.status == 404
    finally:
        service.stop()
