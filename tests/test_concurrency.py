"""Concurrent writers through the API: gap-free run numbers, one event per real change."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from service.domain import lifecycle as lc
from service.web.app import create_app
from tests.helpers import assert_projection, run_level, run_path, as_runtime


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def test_fifty_concurrent_creates_number_runs_1_to_50(api, db):
    pipeline = await api.pipeline()
    runs = await asyncio.gather(*(api.run(pipeline["id"]) for _ in range(50)))
    assert sorted(r["run_number"] for r in runs) == list(range(1, 51))
    assert len({r["id"] for r in runs}) == 50
    listed = (await api.get(f"/pipelines/{pipeline['id']}/runs/?ordering=run_number&limit=100"))
    assert [r["run_number"] for r in listed["results"]] == list(range(1, 51))
    assert listed["count"] == 50
    created = await db.fetch("SELECT run_id, version, data FROM run_events "
                             "WHERE pipeline_id = $1 AND type = 'run.created'",
                             uuid.UUID(pipeline["id"]))
    by_run = {str(e["run_id"]): e for e in created}
    assert len(created) == 50 and set(by_run) == {r["id"] for r in runs}
    assert all(by_run[r["id"]]["data"]["run_number"] == r["run_number"] for r in runs)
    assert {e["version"] for e in created} == {1}
    assert (await api.run(pipeline["id"]))["run_number"] == 51


async def test_concurrent_creates_on_two_pipelines_keep_separate_counters(api):
    first, second = await api.pipeline("first"), await api.pipeline("second")
    runs = await asyncio.gather(*(api.run(p["id"]) for _ in range(15) for p in (first, second)))
    for pipeline in (first, second):
        numbers = sorted(r["run_number"] for r in runs if r["pipeline_id"] == pipeline["id"])
        assert numbers == list(range(1, 16))


async def test_the_same_move_sent_twenty_times_appends_one_event(api, db):
    run = await api.run((await api.pipeline())["id"])
    answers = await asyncio.gather(*(api.put(run_path(run), {"status": "running"})
                                     for _ in range(20)))
    assert {(a["status"], a["version"], a["started_at"]) for a in answers} == {
        ("running", 2, answers[0]["started_at"])}
    events = await assert_projection(db, answers[0])
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "pending"), ("pending", "running")]


async def test_racing_moves_leave_a_legal_gap_free_history(api, db):
    run = await api.run((await api.pipeline())["id"])
    targets = ["running", "cancelled", "queued", "processing", "waiting"] * 4
    path = run_path(run)
    answers = await asyncio.gather(*(
        api.client.put(api.url(path), json={"status": t},
                       headers={"Authorization": f"Bearer {api.token}"}) for t in targets))
    bodies = [await a.json() for a in answers]
    assert {a.status for a in answers} <= {200, 409}
    for target, answer, body in zip(targets, answers, bodies):
        assert body["code"] == answer.status
        if answer.status == 409:
            assert body["content"]["requested_status"] == target
            assert not lc.is_legal(body["content"]["current_status"], target)
    final = await api.get(path)
    events = run_level(await assert_projection(db, final))
    chain = [e["to_status"] for e in events]
    assert chain[0] == "pending" and chain[-1] == final["status"]
    for before, event in zip(events, events[1:]):
        assert event["from_status"] == before["to_status"]
        assert lc.is_legal(event["from_status"], event["to_status"])
    assert len(events) - 1 <= sum(1 for a in answers if a.status == 200)


async def test_concurrent_stage_adds_get_distinct_ordinals(api):
    pipeline = await api.pipeline(stages=())
    path = f"/pipelines/{pipeline['id']}/stages/"
    added = await asyncio.gather(*(api.post(path, {"name": f"s{i}"}) for i in range(20)))
    assert sorted(s["ordinal"] for s in added) == list(range(1, 21))
    listed = (await api.get(path + "?limit=100"))["results"]
    assert [s["ordinal"] for s in listed] == list(range(1, 21))
    assert {s["id"] for s in listed} == {s["id"] for s in added}


class _Request(dict):
    """What api.common.connection reads of a request: its app, and no shared transaction."""

    def __init__(self, app):
        super().__init__()
        self.app = app


async def test_pool_connections_go_to_requests_in_arrival_order(aiohttp_client, db_dsn):
    # 30 requests on a pool of 3, each asking again as soon as it is done: asyncpg's pool
    # alone gives a just-released connection to whoever asks next, ahead of those already
    # waiting (who then wait again, at the back): some requests starved for a second.
    from service.web.handlers.common import connection
    from service.config import Config

    # Request handlers' connections only: the webhook dispatcher (a background task, like
    # the sweeper) takes its connections from the pool directly, without a slot.
    app = (await aiohttp_client(create_app(Config(database_url=as_runtime(db_dsn), pool_min=3,
                                                  pool_max=3, webhooks=False)))).app
    request, arrivals, served = _Request(app), iter(range(10**6)), []

    async def client():
        for _ in range(20):
            arrival = next(arrivals)  # the order in which requests ask for a connection
            async with connection(request) as conn:
                served.append(arrival)
                await conn.fetchval("SELECT 1")

    await asyncio.gather(*(client() for _ in range(30)))
    assert sorted(served) == list(range(600))
    # Slots go in arrival order; a request handed its predecessor's connection with the
    # slot (slots.hand_over) may start a moment before one that got a bare slot and still
    # asks the pool, so a place or two may swap, never more than the pool's size.
    displacement = max(abs(place - arrival) for place, arrival in enumerate(served))
    assert displacement <= 3, served
