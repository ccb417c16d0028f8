"""Tamper evidence: every enterprise's events chained by hash, signed checkpoints, proofs,
and the three verifiers (python -m service verify, the client, docs/verify_chain.py)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import uuid
import sys
from datetime import timezone
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from service.app import runs as run_cases
from service.app.chain import verify_chains
from service.app.context import Actor, OnConnection
from service.infra.db import init_connection
from service.store import pipelines as pipeline_store
from service.client import ChainVerificationError, PipelineRunsClient
from service.config import Config
from service.web.app import create_app
from tests.helpers import sign_in

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "verify_chain.py"
GENESIS = bytes(32)
# A superuser's way around the append-only guard (what the tests play: a DBA gone rogue).
UNGUARDED = "SET session_replication_role = replica"


def field(value) -> bytes:
    """One field of the canonical bytes, written from docs/audit-chain.md alone."""
    if value is None:
        return b"-\n"
    text = value.encode()
    return str(len(text)).encode() + b":" + text + b"\n"


def canonical(e) -> bytes:
    when = e["occurred_at"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    values = [str(e["position"]), str(e["id"]), e["enterprise_id"], str(e["pipeline_id"]),
              str(e["run_id"]), str(e["version"]), e["type"], e["from_status"],
              e["to_status"], e["actor"], None if e["actor_id"] is None else str(e["actor_id"]),
              when, e["data_text"]]
    return b"pipeline-runs event v1\n" + b"".join(field(v) for v in values)


EVENTS = ("SELECT *, data::text AS data_text FROM run_events WHERE enterprise_id = $1 "
          "ORDER BY position")


@pytest.fixture
def db_dsn(own_db):
    return own_db


@pytest.fixture
def config(db_dsn, tmp_path) -> Config:
    return Config(database_url=db_dsn, pool_min=1, pool_max=10, token_cache_seconds=0.5,
                  audit_key_file=str(tmp_path / "audit.key"))


@pytest.fixture
async def server(config):
    """The real app over TCP (the script and the client speak HTTP to it)."""
    runner = web.AppRunner(create_app(config), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def pr(server, token):
    async with PipelineRunsClient(server, token, backoff=0.05) as client:
        yield client


async def history(api, runs: int = 3) -> list[dict]:
    pipeline = await api.pipeline()
    made = []
    for _ in range(runs):
        run = await api.run(pipeline["id"])
        made.append(await api.move(run, "running", "complete", "success"))
    return made


def test_the_migration_copies_the_canonical_definition_verbatim():
    schema = (ROOT / "schema.sql").read_text()
    start = schema.index("CREATE TABLE IF NOT EXISTS event_chain_heads (")
    end = schema.index("-- Each row: its previous hash")
    assert schema[start:end] in (ROOT / "migrations" / "0006_event_chain.sql").read_text()


async def test_the_chain_recomputes_from_the_documented_bytes(api, db, enterprise):
    await history(api)
    rows = await db.fetch(EVENTS, enterprise)
    head = GENESIS
    for row in rows:
        head = hashlib.sha256(head + canonical(dict(row))).digest()
        assert row["chain_hash"] == head
    checkpoint = await api.get("/audit/checkpoint/")
    assert (checkpoint["position"], checkpoint["events"], checkpoint["chain_hash"]) == (
        rows[-1]["position"], len(rows), head.hex())
    assert checkpoint["public_key"] == (await api.get("/audit/public-key/"))["public_key"]
    proof = await api.get(f"/audit/proof/?from=0&limit={len(rows)}")
    assert [base64.b64decode(e["canonical"]) for e in proof["events"]] == [
        canonical(dict(r)) for r in rows]
    assert proof["next_from"] is None and proof["next"] is None


async def test_a_new_enterprise_has_the_genesis_checkpoint(api):
    checkpoint = await api.get("/audit/checkpoint/")
    assert (checkpoint["position"], checkpoint["events"], checkpoint["chain_hash"]) == (
        0, 0, "0" * 64)


async def test_proof_pages_and_bad_parameters(api):
    await history(api, runs=2)
    checkpoint = await api.get("/audit/checkpoint/")
    first = await api.get(f"/audit/proof/?to={checkpoint['position']}&limit=2")
    assert len(first["events"]) == 2 and first["next_from"] == first["events"][-1]["position"]
    rest = await api.get(first["next"])
    assert rest["events"][0]["position"] > first["next_from"]
    for bad in ("from=-1", "limit=0", "limit=10001", "to=x"):
        error = await api.get(f"/audit/proof/?{bad}", status=400)
        assert error["errors"], bad
    empty = await api.get("/audit/proof/?from=5&to=4")
    assert (empty["events"], empty["next_from"], empty["next"]) == ([], None, None)


async def test_checkpoints_need_the_audit_scope(api, db, enterprise):
    from tests.helpers import make_token

    other = await make_token(db, enterprise, scopes=["runs:read"])
    await api.with_token(other).get("/audit/checkpoint/", status=403)
    await api.with_token(None).get("/audit/proof/", status=401)


async def test_the_client_and_the_script_verify_against_a_real_server(pr, api, tmp_path,
                                                                       server, token):
    await history(api, runs=2)
    old = await pr.checkpoint()
    await history(api, runs=2)
    new = await pr.checkpoint()
    assert await pr.verify_chain(old, new, page_size=3) == new["events"] - old["events"]
    assert await pr.verify_chain(None, new) == new["events"]
    kept = tmp_path / "old.json"
    kept.write_text(json.dumps(old))
    done = await _script(server, token, "--old", str(kept))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("OK: position ")
    # A checkpoint the key did not sign (here: a claimed head of another hash) fails both.
    forged = {**new, "chain_hash": "ab" * 32}
    with pytest.raises(ChainVerificationError, match="signature"):
        await pr.verify_chain(old, forged)
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    done = await _script(server, token, "--old", str(kept), "--new", str(tmp_path / "forged.json"))
    assert done.returncode == 1 and "not signed" in done.stderr


async def _script(server: str, token: str, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, str(SCRIPT), "--url", server, "--token", token, *args],
        capture_output=True, text=True, timeout=60)


# --- tampering as a superuser ------------------------------------------------------------

async def interleaved(api, db) -> None:
    """The test's enterprise's events with another enterprise's between them (gaps)."""
    from tests.helpers import make_token

    other = api.with_token(await make_token(db, f"{api_enterprise(api)}-other"))
    mine, theirs = await api.pipeline(), await other.pipeline()
    for _ in range(3):
        for who, pipeline in ((api, mine), (other, theirs)):
            run = await who.run(pipeline["id"])
            await who.move(run, "running")
    # One event in next month's partition (the chain goes across partitions), then more.
    await db.execute(
        "INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, to_status,"
        " actor, occurred_at) VALUES ($1, $2, gen_random_uuid(), 1, 'run.created', 'pending',"
        " 'a', date_trunc('month', now()) + interval '1 month 1 day')",
        api_enterprise(api), mine["id"])
    await api.run(mine["id"])


def api_enterprise(api) -> str:
    return api.enterprise


async def tamper_update(db, rows):
    await db.execute("UPDATE run_events SET to_status = 'failure' WHERE position = $1",
                     rows[3]["position"])
    return rows[3]["position"]


async def tamper_delete(db, rows):
    await db.execute("DELETE FROM run_events WHERE position = $1", rows[2]["position"])
    return rows[3]["position"]


async def tamper_reorder(db, rows):
    a, b = rows[2], rows[3]  # each takes the other's place (the positions stay in order)
    for mine, theirs in ((a, b), (b, a)):
        await db.execute(
            "UPDATE run_events SET id = $2, run_id = $3, version = $4, type = $5, "
            "from_status = $6, to_status = $7, data = $8::text::jsonb WHERE position = $1",
            mine["position"], theirs["id"], theirs["run_id"], theirs["version"],
            theirs["type"], theirs["from_status"], theirs["to_status"], theirs["data_text"])
    return a["position"]


async def tamper_drop_partition(db, rows):
    (later,) = [i for i, r in enumerate(rows) if r["occurred_at"] > rows[-1]["occurred_at"]]
    name = await db.fetchval("SELECT 'run_events_' || to_char(date_trunc('month', now()) "
                             "+ interval '1 month', '\"y\"YYYY\"m\"MM')")
    await db.execute(f'DROP TABLE "{name}"')
    return rows[later + 1]["position"]


async def tamper_forge(db, rows):
    # A made-up event in a gap of the positions, its own hash recomputed as the trigger would.
    before, after = rows[1], rows[2]
    assert after["position"] - before["position"] > 1
    forged = {**dict(before), "position": before["position"] + 1, "to_status": "success",
              "id": before["run_id"]}
    forged["chain_hash"] = hashlib.sha256(before["chain_hash"] + canonical(forged)).digest()
    await db.execute(
        "INSERT INTO run_events (position, id, enterprise_id, pipeline_id, run_id, version, "
        "type, from_status, to_status, actor, actor_id, occurred_at, data, chain_hash) "
        "OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
        "$13::text::jsonb, $14)", *(forged[k] for k in (
            "position", "id", "enterprise_id", "pipeline_id", "run_id", "version", "type",
            "from_status", "to_status", "actor", "actor_id", "occurred_at", "data_text",
            "chain_hash")))
    return after["position"]


@pytest.mark.parametrize("tamper", [tamper_update, tamper_delete, tamper_reorder,
                                    tamper_drop_partition, tamper_forge])
async def test_tampering_is_named_by_verify_and_fails_the_kept_checkpoint(
        tamper, api, db, db_dsn, enterprise, pr):
    api.enterprise = enterprise
    await interleaved(api, db)
    kept = await pr.checkpoint()
    assert (await verify_chains(db))[1] == []
    rows = [dict(r) for r in await db.fetch(EVENTS, enterprise)]
    await db.execute(UNGUARDED)
    broken_at = await tamper(db, rows)
    await db.execute("SET session_replication_role = origin")
    for parts in (1, 3):  # one scan, or position ranges side by side (the CLI's way)
        chains, breaks = await verify_chains(db, lambda: asyncpg.connect(db_dsn), parts)
        assert chains == 2
        assert [(b.enterprise_id, b.position) for b in breaks] == [(enterprise, broken_at)]
    with pytest.raises(ChainVerificationError):
        await pr.verify_chain(None, kept)  # the history up to the kept checkpoint changed


async def test_a_rewritten_chain_fails_only_against_a_kept_checkpoint(api, db, enterprise, pr):
    """A superuser who rewrites an event AND every hash after it (and the head) leaves a
    consistent chain: the checkpoint kept elsewhere still catches it, and they cannot sign
    one for their version without the key."""
    await history(api, runs=2)
    kept = await pr.checkpoint()
    rows = [dict(r) for r in await db.fetch(EVENTS, enterprise)]
    await db.execute(UNGUARDED)
    rows[1]["to_status"] = "cancelled"
    head = GENESIS
    for row in rows:
        head = hashlib.sha256(head + canonical(row)).digest()
        await db.execute("UPDATE run_events SET to_status = $2, chain_hash = $3 "
                         "WHERE position = $1", row["position"], row["to_status"], head)
    await db.execute("UPDATE event_chain_heads SET chain_hash = $2 WHERE enterprise_id = $1",
                     enterprise, head)
    await db.execute("SET session_replication_role = origin")
    assert (await verify_chains(db))[1] == []
    with pytest.raises(ChainVerificationError, match="does not recompute"):
        await pr.verify_chain(None, kept)
    with pytest.raises(ChainVerificationError, match="signature"):
        await pr.verify_chain(None, {**kept, "chain_hash": head.hex()})


async def test_racing_writers_keep_one_chain_in_feed_order(api, db, enterprise, pr):
    pipeline = await api.pipeline()
    runs = await asyncio.gather(*(api.run(pipeline["id"]) for _ in range(20)))
    for target in ("running", "waiting", "running"):
        await asyncio.gather(*(api.move(r, target) for r in runs))
    await asyncio.gather(*(api.delete(f"/pipelines/{r['pipeline_id']}/runs/{r['id']}/")
                           for r in runs[:5]))
    assert (await verify_chains(db))[1] == []
    checkpoint = await pr.checkpoint()
    assert checkpoint["events"] == await db.fetchval(
        "SELECT count(*) FROM run_events WHERE enterprise_id = $1", enterprise)
    assert await pr.verify_chain(None, checkpoint) == checkpoint["events"]


def test_cli_verify_names_the_first_broken_event(db_dsn):
    async def tamper() -> tuple[str, int, str]:
        conn = await asyncpg.connect(db_dsn)
        try:
            await init_connection(conn)
            pipeline = await pipeline_store.create_pipeline(conn, "cli", 1, {"name": "p"})
            for _ in range(3):
                await run_cases.create(OnConnection(conn), Actor("cli", "cli", 1), pipeline["id"])
            row = await conn.fetchrow("SELECT position, id FROM run_events ORDER BY position "
                                      "OFFSET 1 LIMIT 1")
            await conn.execute(UNGUARDED)
            await conn.execute("UPDATE run_events SET actor = 'someone else' WHERE id = $1",
                               row["id"])
            return "cli", row["position"], str(row["id"])
        finally:
            await conn.close()

    enterprise, position, event_id = asyncio.run(tamper())
    env = {"DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "service", "verify"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"CHAIN BROKEN enterprise {enterprise} at position {position} (event {event_id}): "
            in done.stdout), done.stdout
    assert "verified the hash chains of 1 enterprises (6 events)" in done.stdout
    assert ": 1 broken" in done.stdout


async def test_pages_show_chain_positions_the_checkpoint_and_a_break(client, api, db, token,
                                                                      enterprise):
    (run, *_) = await history(api, runs=1)
    await sign_in(client, token)
    rows = await db.fetch(EVENTS, enterprise)
    run_page = f"/ui/pipelines/{run['pipeline_id']}/runs/{run['id']}"
    for path in (run_page, "/ui/activity"):
        text = await (await client.get(path)).text()
        assert (f"every event shown here verified, up to checkpoint {rows[-1]['position']} "
                f"({len(rows)} events)") in text, path
        for row in rows:
            assert f"#{row['position']} <span title=\"link verified\">" in text, path
    download = await client.get("/ui/audit/checkpoint.json")
    assert download.status == 200
    assert download.headers["Content-Disposition"].startswith("attachment;")
    kept = await download.json()
    assert (kept["position"], kept["events"]) == (rows[-1]["position"], len(rows))
    await db.execute(UNGUARDED)
    await db.execute("UPDATE run_events SET actor = 'x' WHERE position = $1", rows[1]["position"])
    await db.execute("SET session_replication_role = origin")
    text = await (await client.get(run_page)).text()
    assert f"<strong>Hash chain broken</strong> at position {rows[1]['position']}:" in text
    assert f"#{rows[1]['position']} <strong title=\"link broken\">" in text


async def test_migration_chains_the_events_of_a_previous_schema_database(admin_dsn):
    """tests/data/previous_schema.sql with events of two enterprises, migrated: every chain
    is whole, its head counts the events, and appends after it extend it."""
    from service.store import meta
    from tests.helpers import admin, dsn_for

    name = f"pr_chain_{uuid.uuid4().hex[:8]}"
    await admin(admin_dsn, f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(dsn_for(admin_dsn, name))
    try:
        await conn.execute((ROOT / "tests" / "data" / "previous_schema.sql").read_text())
        add = ("INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, actor,"
               " occurred_at, data) SELECT $1, gen_random_uuid(), gen_random_uuid(), 1,"
               " 'run.created', 'a', now(), '{\"reason\": \"é\\\\n\"}' FROM generate_series(1, $2)")
        for enterprise, n in (("a", 3), ("b", 2), ("a", 2)):
            await conn.execute(add, enterprise, n)
        await meta.migrate(conn)
        assert await verify_chains(conn) == (2, [])
        assert dict(await conn.fetch("SELECT enterprise_id, events FROM event_chain_heads")) == {
            "a": 5, "b": 2}
        await conn.execute(add, "a", 1)
        assert await verify_chains(conn) == (2, [])
    finally:
        await conn.close()
        await admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
