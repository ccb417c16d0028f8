"""Consistency-Token on the primary alone (no READ_DATABASE_URLS): every success carries one,
a write's covers its commit, reads honour and echo it, and OpenAPI documents it."""
from __future__ import annotations

import asyncpg

from tests.helpers import Api
from service.config import Config
from service.infra.replicas import parse_token
from service.store import replication
from service.web.app import create_app
from service.web.handlers import root

TOKEN = "Consistency-Token"
INSERT_LSN = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8"


async def token_of(api) -> int:
    return parse_token(api.last.headers[TOKEN])


async def test_every_write_answers_a_token_past_its_commit(api, db):
    before = await db.fetchval(INSERT_LSN)
    pipeline = await api.pipeline()
    created = await token_of(api)
    assert created > before
    run = await api.run(pipeline["id"])
    after_run = await token_of(api)
    assert after_run > created
    # A grouped status change (group commit: no connection of the handler's own) too.
    await api.move(run, "running")
    moved = await token_of(api)
    assert moved > after_run
    # The commit is in: a fresh connection at the token's position sees it.
    assert await db.fetchval(INSERT_LSN) >= moved
    await api.delete(f"/pipelines/{pipeline['id']}/runs/{run['id']}/")
    assert await token_of(api) > moved


async def test_an_idempotent_replay_carries_a_token_too(api):
    pipeline = await api.pipeline()
    headers = {"Idempotency-Key": "replica-token-1"}
    await api.post(f"/pipelines/{pipeline['id']}/runs/", {}, headers=headers)
    first = await token_of(api)
    await api.post(f"/pipelines/{pipeline['id']}/runs/", {}, headers=headers)
    assert api.last.headers["Idempotent-Replayed"] == "true"
    assert await token_of(api) >= first


async def test_reads_answer_a_token_at_least_the_one_sent(api):
    pipeline = await api.pipeline()
    written = api.last.headers[TOKEN]
    await api.get(f"/pipelines/{pipeline['id']}/", headers={TOKEN: written})
    assert await token_of(api) >= parse_token(written)
    # A token from the future (another cluster, say) is still answered, by the primary, and
    # the answer's token says what it reflects, not what was asked.
    await api.get("/runs/", headers={TOKEN: "1.7fffffffffff"})
    assert parse_token(written) <= await token_of(api) < 0x7fffffffffff


async def test_a_malformed_token_is_a_400_envelope_naming_the_header(api):
    for bad in ("0/16B3748", "2.abc", "1.xyz", "1." + "f" * 17):
        content = await api.get("/runs/", status=400, headers={TOKEN: bad})
        assert TOKEN in content["errors"]


async def test_an_error_answer_has_no_token(api):
    await api.get("/pipelines/00000000-0000-0000-0000-000000000000/", status=404)
    assert TOKEN not in api.last.headers


async def test_openapi_documents_the_header_on_reads_and_the_response_header_on_all(client):
    spec = await (await client.get("/api/docs/swagger.json")).json()
    operations = [(path, method, op) for path, methods in spec["paths"].items()
                  for method, op in methods.items()
                  if not path.startswith("/health") and path not in root.PATHS]  # no database
    assert operations
    for path, method, op in operations:
        assert TOKEN in op["responses"]["200"]["headers"], (method, path)
        sent = [p for p in op.get("parameters", []) if p.get("name") == TOKEN]
        # Reads (a :read scope) take the header; webhook subscriptions (webhooks:manage) are
        # settings, read and written on the primary.
        read = method == "get" and not path.startswith("/pipelines/v0/webhooks/")
        assert bool(sent) == read, (method, path)


async def test_health_ready_has_no_replicas_without_read_database_urls(api):
    content = await api.get("/health/ready")
    assert content == {"status": "ready", "event_log": "protected"}


async def test_a_standby_that_never_answers_leaves_reads_on_the_primary(
        aiohttp_client, config, token):
    """READ_DATABASE_URLS naming a closed port: reads answer, /health/ready says why."""
    app = create_app(config.with_(read_database_urls=("postgresql://postgres@127.0.0.1:9/x",),
                                  db_connect_timeout=1.0))
    api = Api(await aiohttp_client(app), token)
    pipeline = await api.pipeline()
    assert (await api.get(f"/pipelines/{pipeline['id']}/"))["id"] == pipeline["id"]
    [replica] = (await api.get("/health/ready"))["replicas"]
    assert replica["healthy"] is False and replica["reason"].startswith("probe failed")


def test_read_database_urls_and_replica_settings_come_from_the_environment():
    config = Config.from_env({"READ_DATABASE_URLS": " postgresql://a/x, postgresql://b/x ,",
                              "REPLICA_WAIT_MS": "50", "REPLICA_MAX_LAG_SECONDS": "5",
                              "REPLICA_PROBE_SECONDS": "0.5"})
    assert config.read_database_urls == ("postgresql://a/x", "postgresql://b/x")
    assert (config.replica_wait_ms, config.replica_max_lag_seconds,
            config.replica_probe_seconds) == (50, 5.0, 0.5)
    assert Config.from_env({}).read_database_urls == ()


async def test_a_position_a_read_answered_stands_only_while_it_is_the_last_statement(db_dsn):
    # The hot reads answer their position in their own statement (store/replication.py):
    # it stands for the connection's position only until anything else runs on it.
    conn = await asyncpg.connect(db_dsn)
    try:
        real = await conn.fetchval(f"SELECT {replication.POSITION_COLUMN}")
        assert real > 0
        replication.note(conn, 1)  # a stand-in, to tell the note from a fresh read
        assert await replication.insert_lsn(conn) == 1
        await conn.fetchval("SELECT txid_current()")  # a commit record since
        assert await replication.insert_lsn(conn) > real
        other = await asyncpg.connect(db_dsn)
        try:
            replication.note(conn, 1)
            assert await replication.insert_lsn(other) > 1  # another connection's: read
        finally:
            await other.close()
    finally:
        await conn.close()
