"""Idempotency-Key on POST /runs, /pipelines, /stages: one execution per key and enterprise.

Every test here fails without the mechanism: a second POST would write a second row.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio

from service.config import Config
from service.infra.db import create_pool
from service.web.idempotency import KEY_HEADER, REPLAYED_HEADER
from service.store import idempotency as key_store
from service.app.sweeper import sweep_once
from tests.helpers import make_token
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def key() -> str:
    return f"key-{uuid.uuid4()}"


async def counts(db, enterprise: str) -> dict[str, int]:
    """Everything a POST can write, in the enterprise."""
    return {table: await db.fetchval(f"SELECT count(*) FROM {table} WHERE enterprise_id = $1",
                                     enterprise)
            for table in ("pipelines", "stages", "pipeline_runs", "run_events", "stage_runs")}


async def raw_post(api, path: str, json=None, headers=None):
    """(status, headers, text) of one POST with the api's token."""
    all_headers = {"Authorization": f"Bearer {api.token}", **(headers or {})}
    resp = await api.client.post(api.url(path), json=json, headers=all_headers)
    return resp.status, resp.headers, await resp.text()


# The three keyed operations: (name, path template, body, body that differs).
OPERATIONS = {
    "run": ("/pipelines/{pipeline_id}/runs/", {}, {"note": "another"}),
    "pipeline": ("/pipelines/", {"name": "keyed", "stages": [{"name": "a"}]}, {"name": "other"}),
    "stage": ("/pipelines/{pipeline_id}/stages/", {"name": "deploy"}, {"name": "verify"}),
}


@pytest_asyncio.fixture(loop_scope="module")
async def pipeline(api) -> dict:
    return await api.pipeline()


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_replay_answers_the_first_response_and_writes_nothing(api, db, enterprise,
                                                                     pipeline, operation):
    template, body, _ = OPERATIONS[operation]
    path = template.format(pipeline_id=pipeline["id"])
    headers = {KEY_HEADER: key()}
    before = await counts(db, enterprise)
    first = await raw_post(api, path, body, headers)
    assert first[0] == 200, first
    after_first = await counts(db, enterprise)
    assert after_first != before
    for _ in range(3):
        again = await raw_post(api, path, body, headers)
        assert again[0] == first[0] and again[2] == first[2]  # byte for byte
        assert again[1].get("ETag") == first[1].get("ETag")
        assert again[1]["Content-Type"] == first[1]["Content-Type"]
        assert again[1][REPLAYED_HEADER] == "true"
    assert REPLAYED_HEADER not in first[1]
    assert await counts(db, enterprise) == after_first


async def test_a_replayed_run_create_is_one_run_and_one_event_with_the_first_etag(api, db,
                                                                                   enterprise,
                                                                                   pipeline):
    path = f"/pipelines/{pipeline['id']}/runs/"
    headers = {KEY_HEADER: key()}
    run = await api.post(path, {}, headers=headers)
    etag = api.last.headers["ETag"]
    assert etag == '"1"'
    # The run moves on; a late retry still answers the create as it was first answered.
    await api.move(run, "running")
    replay = await api.post(path, {}, headers=headers)
    assert replay == run and api.last.headers["ETag"] == etag
    assert await db.fetchval("SELECT count(*) FROM pipeline_runs WHERE pipeline_id = $1",
                             uuid.UUID(pipeline["id"])) == 1
    events = await db.fetch("SELECT type FROM run_events WHERE enterprise_id = $1 "
                            "AND run_id = $2 ORDER BY version", enterprise, uuid.UUID(run["id"]))
    assert [e["type"] for e in events if e["type"].startswith("run.")] == [
        "run.created", "run.status_changed"]
    assert (await api.get(path))["count"] == 1


async def test_the_same_key_through_another_mount_is_the_same_request(api, db, enterprise, pipeline):
    path = f"/pipelines/{pipeline['id']}/runs/"
    headers = {KEY_HEADER: key()}
    run = await api.post(path, {}, headers=headers)
    assert await api.at("/api/pipelines/v0").post(path.rstrip("/"), {}, headers=headers) == run
    upper = f"/pipelines/{pipeline['id'].upper()}/runs/"
    assert await api.at("/v0").post(upper, {}, headers=headers) == run
    assert (await counts(db, enterprise))["pipeline_runs"] == 1


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_the_same_key_with_another_body_is_422_and_writes_nothing(api, db, enterprise,
                                                                       pipeline, operation):
    template, body, other = OPERATIONS[operation]
    path = template.format(pipeline_id=pipeline["id"])
    headers = {KEY_HEADER: key()}
    first = await api.post(path, body, headers=headers)
    before = await counts(db, enterprise)
    content = await api.post(path, other, status=422, headers=headers)
    assert content["first_request"]["method"] == "POST"
    assert await counts(db, enterprise) == before
    # The key still answers its own request.
    assert await api.post(path, body, headers=headers) == first


async def test_the_same_key_on_another_path_or_operation_is_422(api, db, enterprise, pipeline):
    other = await api.pipeline("other")
    headers = {KEY_HEADER: key()}
    await api.post(f"/pipelines/{pipeline['id']}/runs/", {}, headers=headers)
    before = await counts(db, enterprise)
    await api.post(f"/pipelines/{other['id']}/runs/", {}, status=422, headers=headers)
    await api.post(f"/pipelines/{pipeline['id']}/stages/", {"name": "x"}, status=422,
                   headers=headers)
    await api.post("/pipelines/", {"name": "x"}, status=422, headers=headers)
    assert await counts(db, enterprise) == before


async def test_semantically_equal_json_bodies_are_the_same_request(api, db, enterprise):
    headers = {KEY_HEADER: key(), "Content-Type": "application/json"}
    first = await api.call("POST", "/pipelines/", data='{"name": "a", "description": "d"}',
                           headers=headers)
    again = await api.call("POST", "/pipelines/", data='{"description":"d",\n "name":"a"}',
                           headers=headers)
    assert again == first and (await counts(db, enterprise))["pipelines"] == 1


async def test_another_enterprises_same_key_is_independent(api, db, enterprise, pipeline):
    shared_key = key()
    other_enterprise = f"{enterprise}-other"
    other = api.with_token(await make_token(db, other_enterprise))
    theirs = await other.pipeline()
    mine = await api.post(f"/pipelines/{pipeline['id']}/runs/", {},
                          headers={KEY_HEADER: shared_key})
    their_run = await other.post(f"/pipelines/{theirs['id']}/runs/", {},
                                 headers={KEY_HEADER: shared_key})
    assert their_run["id"] != mine["id"] and their_run["enterprise_id"] == other_enterprise
    # Not a 422 either: the other enterprise's first use of the key, on its own path.
    created = await other.post("/pipelines/", {"name": "x"}, headers={KEY_HEADER: key()})
    assert created["enterprise_id"] == other_enterprise
    assert (await counts(db, enterprise))["pipeline_runs"] == 1
    assert (await counts(db, other_enterprise))["pipeline_runs"] == 1


async def test_two_tokens_of_one_enterprise_share_the_key(api, db, enterprise, pipeline):
    colleague = api.with_token(await make_token(db, enterprise, "colleague"))
    headers = {KEY_HEADER: key()}
    run = await api.post(f"/pipelines/{pipeline['id']}/runs/", {}, headers=headers)
    assert await colleague.post(f"/pipelines/{pipeline['id']}/runs/", {}, headers=headers) == run


async def test_an_expired_key_acts_new(api, db, enterprise, pipeline):
    path = f"/pipelines/{pipeline['id']}/runs/"
    the_key = key()
    first = await api.post(path, {}, headers={KEY_HEADER: the_key})
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                     "WHERE enterprise_id = $1 AND key = $2", enterprise, the_key)
    second = await api.post(path, {}, headers={KEY_HEADER: the_key})
    assert second["id"] != first["id"] and second["run_number"] == 2
    assert REPLAYED_HEADER not in api.last.headers
    # ... and is live again from now: a third request replays the second.
    assert await api.post(path, {}, headers={KEY_HEADER: the_key}) == second
    # An expired key also takes a different body: it is a new key.
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                     "WHERE enterprise_id = $1 AND key = $2", enterprise, the_key)
    await api.post("/pipelines/", {"name": "reused"}, headers={KEY_HEADER: the_key})
    assert (await counts(db, enterprise))["pipeline_runs"] == 2


async def test_a_key_just_inside_24_hours_still_replays(api, db, enterprise, pipeline):
    path = f"/pipelines/{pipeline['id']}/runs/"
    the_key = key()
    first = await api.post(path, {}, headers={KEY_HEADER: the_key})
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes' "
                     "WHERE enterprise_id = $1 AND key = $2", enterprise, the_key)
    assert await api.post(path, {}, headers={KEY_HEADER: the_key}) == first


async def test_expired_keys_are_purged_by_the_sweeper(api, db, enterprise, pipeline, db_dsn):
    path = f"/pipelines/{pipeline['id']}/runs/"
    old, fresh = key(), key()
    await api.post(path, {}, headers={KEY_HEADER: old})
    await api.post(path, {}, headers={KEY_HEADER: fresh})
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                     "WHERE enterprise_id = $1 AND key = $2", enterprise, old)
    pool = await create_pool(Config(pool_min=1, pool_max=1), db_dsn)
    try:
        for _ in range(50):  # another test's app may be sweeping this database right now
            if await sweep_once(pool) is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        await pool.close()
    keys = await db.fetch("SELECT key FROM idempotency_keys WHERE enterprise_id = $1", enterprise)
    assert [k["key"] for k in keys] == [fresh]
    assert await key_store.purge_expired(db) == 0


async def test_ten_concurrent_posts_with_one_key_execute_once(api, db, enterprise, pipeline):
    path = f"/pipelines/{pipeline['id']}/runs/"
    headers = {KEY_HEADER: key()}
    answers = await asyncio.gather(*(raw_post(api, path, {}, headers) for _ in range(10)))
    assert {status for status, _, _ in answers} == {200}
    assert len({text for _, _, text in answers}) == 1
    assert len({h["ETag"] for _, h, _ in answers}) == 1
    assert sum(REPLAYED_HEADER not in h for _, h, _ in answers) == 1
    assert (await counts(db, enterprise))["pipeline_runs"] == 1
    assert await db.fetchval("SELECT count(*) FROM run_events WHERE enterprise_id = $1 "
                             "AND type = 'run.created'", enterprise) == 1


async def test_concurrent_posts_with_one_key_and_different_bodies_write_once(api, db, enterprise):
    headers = {KEY_HEADER: key()}
    answers = await asyncio.gather(*(raw_post(api, "/pipelines/", {"name": f"p{i}"}, headers)
                                     for i in range(8)))
    assert sorted(status for status, _, _ in answers) == [200] + [422] * 7
    assert (await counts(db, enterprise))["pipelines"] == 1


async def test_errors_are_not_stored_so_a_retry_executes_again(api, db, enterprise, pipeline):
    missing = f"/pipelines/{uuid.uuid4()}/runs/"
    headers = {KEY_HEADER: key()}
    for _ in range(2):
        await api.post(missing, {}, status=404, headers=headers)
        assert REPLAYED_HEADER not in api.last.headers
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE enterprise_id = $1",
                             enterprise) == 0
    # An invalid attempt leaves the key free for the corrected request.
    await api.post(f"/pipelines/{pipeline['id']}/stages/", {"name": "x" * 256}, status=400,
                   headers=headers)
    stage = await api.post(f"/pipelines/{pipeline['id']}/stages/", {"name": "x"}, headers=headers)
    assert stage["name"] == "x"


async def test_a_failure_after_the_claim_rolls_the_key_back(api, db, enterprise):
    # Deleting the pipeline between attempts: the first create_stage 404s inside the keyed
    # transaction, after the key was claimed; nothing of it may stay.
    pipeline = await api.pipeline()
    await api.delete(f"/pipelines/{pipeline['id']}/")
    headers = {KEY_HEADER: key()}
    await api.post(f"/pipelines/{pipeline['id']}/stages/", {"name": "x"}, status=404,
                   headers=headers)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE enterprise_id = $1",
                             enterprise) == 0
    await api.post("/pipelines/", {"name": "x"}, headers=headers)  # free: not a 422


async def test_without_a_key_every_post_executes(api, db, enterprise, pipeline):
    path = f"/pipelines/{pipeline['id']}/runs/"
    runs = [await api.post(path, {}) for _ in range(3)]
    assert [r["run_number"] for r in runs] == [1, 2, 3]


@pytest.mark.parametrize("value", ["", " ", "x" * 256, "caf\u00e9", "tab\there", "\u2603"],
                         ids=["empty", "blank", "too-long", "non-ascii", "tab", "unicode"])
async def test_a_malformed_key_is_400_and_writes_nothing(api, db, enterprise, pipeline, value):
    before = await counts(db, enterprise)
    status, _, text = await raw_post(api, f"/pipelines/{pipeline['id']}/runs/", {},
                                     {KEY_HEADER: value})
    assert status == 400, text
    assert KEY_HEADER in text
    assert await counts(db, enterprise) == before


async def test_a_key_of_255_printable_characters_is_fine(api, pipeline):
    value = ("!~ aZ09" * 40)[:254] + "z"
    assert len(value) == 255
    run = await api.post(f"/pipelines/{pipeline['id']}/runs/", {}, headers={KEY_HEADER: value})
    assert await api.post(f"/pipelines/{pipeline['id']}/runs/", {},
                          headers={KEY_HEADER: value}) == run


async def test_openapi_documents_the_header_and_the_422(client):
    spec = await (await client.get("/api/docs/swagger.json")).json()
    paths = spec["paths"]
    keyed = {("/pipelines/v0/pipelines/", "post"),
             ("/pipelines/v0/pipelines/{pipeline_id}/runs/", "post"),
             ("/pipelines/v0/pipelines/{pipeline_id}/stages/", "post")}
    for path, method in keyed:
        operation = paths[path][method]
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
        assert KEY_HEADER in names, (path, method)
        assert "422" in operation["responses"], (path, method)
    for path, operations in paths.items():
        for method, operation in operations.items():
            if (path, method) in keyed or not isinstance(operation, dict):
                continue
            names = [p["name"] for p in operation.get("parameters", [])]
            assert KEY_HEADER not in names, (path, method)
