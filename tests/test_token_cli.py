"""Tokens: the CLI lists tokens without secrets and revokes them; revocation wins over the
app's token cache within seconds; tokens are stored only as sha256 hashes."""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys

from tests.helpers import REPO, as_runtime, make_token, wait_until


async def cli(db_dsn: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": as_runtime(db_dsn), "LOG_FORMAT": "text"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def token_row(db, token: str):
    return await db.fetchrow("SELECT * FROM api_tokens WHERE token_hash = $1",
                             hashlib.sha256(token.encode()).digest())


async def test_list_tokens_never_prints_a_secret(api, db, db_dsn, enterprise):
    other = await make_token(db, enterprise, "second", ["runs:read"])
    code, out, err = await cli(db_dsn, "list-tokens")
    assert code == 0, err
    for secret in (api.token, other):
        row = await token_row(db, secret)
        assert secret not in out and secret not in err
        assert secret[3:] not in out  # not even without its prefix
        assert bytes(row["token_hash"]).hex() not in out
        line = next(x for x in out.splitlines() if x.split("\t")[0] == str(row["id"]))
        assert line.split("\t")[1:3] == [enterprise, row["name"]]


async def test_a_revoked_token_is_refused_within_seconds_despite_the_cache(api, db, db_dsn,
                                                                        client, config,
                                                                        enterprise):
    doomed = api.with_token(await make_token(db, enterprise, "doomed"))
    await doomed.get("/pipelines/")  # now in the app's token cache
    row = await token_row(db, doomed.token)
    code, out, err = await cli(db_dsn, "revoke-token", str(row["id"]))
    assert code == 0 and "revoked" in out, (out, err)

    async def refused():
        resp = await client.get("/pipelines/v0/pipelines/",
                                headers={"Authorization": f"Bearer {doomed.token}"})
        assert resp.status in (200, 401), resp.status
        return resp if resp.status == 401 else None

    # Within the cache's lifetime, with room for a loaded machine.
    resp = await wait_until(refused, config.token_cache_seconds + 15,
                            what="the revoked token to be refused")
    body = await resp.json()
    assert body == {"code": 401, "message": body["message"], "content": {}}
    assert (await token_row(db, doomed.token))["revoked_at"] is not None
    await api.get("/pipelines/")  # the enterprise's other token is untouched
    code, out, err = await cli(db_dsn, "revoke-token", str(row["id"]))  # twice: nothing to do
    assert code == 1 and out == "" and "not found or already revoked" in err


async def test_revoking_an_unknown_token_fails(db_dsn):
    code, out, err = await cli(db_dsn, "revoke-token", "987654321")
    assert code == 1 and out == "" and "not found" in err  # an error: on stderr


async def test_tokens_are_stored_only_as_sha256_hashes(api, db):
    await api.run((await api.pipeline())["id"])  # the token at work: events, runs, keys
    row = await token_row(db, api.token)
    assert bytes(row["token_hash"]) == hashlib.sha256(api.token.encode()).digest()
    tables = await db.fetch("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
    assert "api_tokens" in {t["table_name"] for t in tables}
    for table in tables:
        name = table["table_name"]
        found = await db.fetchval(f'SELECT count(*) FROM "{name}" t WHERE strpos(t::text, $1) > 0',
                                  api.token[3:])
        assert found == 0, f"the plain token is stored in {name}"
