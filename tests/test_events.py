"""Audit reads: per-run history, state as of a time, and the enterprise change feed."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from service.config import Config
from service.app import positions
from service.web.app import create_app
from service.web.keys import FEED_WAITERS
from tests.helpers import make_token, wait_until, as_runtime


def _run_path(run: dict) -> str:
    return f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"


def _at(value: str) -> str:
    return quote(value, safe="")


async def test_history_lists_every_change_in_version_order(api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running", "waiting", "running")
    history = await api.get(_run_path(run) + "events/", headers={"X-Request-ID": "audit-1"})
    assert history["count"] == 4 and history["next"] is None
    events = history["results"]
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    assert [(e["type"], e["from_status"], e["to_status"]) for e in events] == [
        ("run.created", None, "pending"),
        ("run.status_changed", "pending", "running"),
        ("run.status_changed", "running", "waiting"),
        ("run.status_changed", "waiting", "running"),
    ]
    assert {e["actor"] for e in events} == {"tester"}
    assert all(e["run_id"] == run["id"] and e["pipeline_id"] == pipeline["id"] for e in events)
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    assert set(events[0]) == {"id", "position", "run_id", "pipeline_id", "version", "type",
                              "from_status", "to_status", "actor", "occurred_at",
                              "request_id", "data"}
    assert all(e["request_id"] and e["data"]["request_id"] == e["request_id"] for e in events)


async def test_history_records_the_callers_request_id(api):
    pipeline = await api.pipeline()
    run = await api.post(f"/pipelines/{pipeline['id']}/runs/", {},
                         headers={"X-Request-ID": "deploy-42"})
    assert api.last.headers["X-Request-ID"] == "deploy-42"
    events = (await api.get(_run_path(run) + "events/"))["results"]
    assert events[0]["request_id"] == "deploy-42"


async def test_history_pages_and_survives_delete(api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running", "waiting", "running", "complete", "success")
    await api.delete(_run_path(run))
    await api.get(_run_path(run), status=404)
    first = await api.get(_run_path(run) + "events/?limit=4")
    # 1 created + 5 moves + 2 stage runs cancelled by the cascade + 1 deleted
    assert first["count"] == 9 and len(first["results"]) == 4
    rest = await api.get(first["next"])
    rest_more = await api.get(rest["next"])
    events = first["results"] + rest["results"] + rest_more["results"]
    assert [e["version"] for e in events] == list(range(1, 10))
    assert [e["type"] for e in events[6:8]] == ["stage_run.status_changed"] * 2
    assert {e["actor"] for e in events[6:8]} == {"system"}
    last = events[-1]
    assert last["type"] == "run.deleted" and last["from_status"] == "success"
    assert last["to_status"] is None


async def test_history_is_404_for_unknown_or_foreign_runs(api, db, client):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.get(f"/pipelines/{pipeline['id']}/runs/{pipeline['id']}/events/", status=404)
    other = api.with_token(await make_token(db, "someone-else"))
    await other.get(_run_path(run) + "events/", status=404)


async def test_as_of_returns_the_run_as_it_was(api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    running = await api.move(run, "running")
    waiting = await api.move(run, "waiting")
    path = _run_path(run)
    at_create = await api.get(f"{path}?as_of={_at(run['created_at'])}")
    assert at_create == {**run}
    between = await api.get(f"{path}?as_of={_at(running['updated_at'])}")
    assert between == running
    now = await api.get(f"{path}?as_of={_at(datetime.now(timezone.utc).isoformat())}")
    assert now == waiting


async def test_as_of_before_creation_is_404_and_before_delete_answers(api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    running = await api.move(run, "running")
    await api.delete(_run_path(run))
    before = datetime.fromisoformat(run["created_at"]) - timedelta(microseconds=1)
    await api.get(f"{_run_path(run)}?as_of={_at(before.isoformat())}", status=404)
    still = await api.get(f"{_run_path(run)}?as_of={_at(running['updated_at'])}")
    assert still == running
    later = datetime.now(timezone.utc).isoformat()
    await api.get(f"{_run_path(run)}?as_of={_at(later)}", status=404)


@pytest.mark.parametrize("value", ["yesterday", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z"])
async def test_as_of_needs_an_rfc3339_instant(api, value):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    content = await api.get(f"{_run_path(run)}?as_of={_at(value)}", status=400)
    assert "as_of" in content["errors"]


# RFC 3339 instants Python cannot hold in UTC (before year 1, after 9999), and "t"/"z".
EARLIEST, LATEST = "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59"


async def test_every_rfc3339_instant_is_accepted_and_means_what_it_says(api):
    pipeline = await api.pipeline()
    run = await api.move(await api.run(pipeline["id"]), "running")
    path = _run_path(run)
    await api.get(f"{path}?as_of={_at(EARLIEST)}", status=404)  # before the run existed
    assert await api.get(f"{path}?as_of={_at(LATEST)}") == {**run, "version": 2}
    lower = run["updated_at"].replace("T", "t").replace("+00:00", "z")
    assert (await api.get(f"{path}?as_of={_at(lower)}"))["status"] == "running"

    runs = f"/pipelines/{pipeline['id']}/runs/?"
    assert (await api.get(f"{runs}created_after={_at(EARLIEST)}"))["count"] == 1
    assert (await api.get(f"{runs}created_before={_at(EARLIEST)}"))["count"] == 0
    assert (await api.get(f"{runs}updated_before={_at(LATEST)}"))["count"] == 1
    assert (await api.get(f"{runs}updated_after={_at(LATEST)}"))["count"] == 0
    feed = f"/events/?run_id={run['id']}&"
    assert len((await api.get(f"{feed}since={_at(EARLIEST)}&until={_at(LATEST)}"))["results"]) == 2
    assert (await api.get(f"{feed}until={_at(EARLIEST)}"))["results"] == []


async def test_as_of_and_history_need_audit_scope(api, db, enterprise):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    reader = api.with_token(await make_token(db, enterprise, "reader", ["runs:read"]))
    assert (await reader.get(_run_path(run)))["id"] == run["id"]
    now = _at(datetime.now(timezone.utc).isoformat())
    await reader.get(f"{_run_path(run)}?as_of={now}", status=403)
    await reader.get(_run_path(run) + "events/", status=403)
    await reader.get("/events/", status=403)


async def test_feed_serves_the_enterprise_in_position_order(api, db):
    other = api.with_token(await make_token(db, "feed-other"))
    await other.run((await other.pipeline())["id"])
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running", "cancelled")
    feed = await api.get("/events/")
    events = feed["results"]
    # created, running, cancelled, then the cascade cancels the two stage runs
    assert [(e["run_id"], e["version"]) for e in events] == [(run["id"], v) for v in range(1, 6)]
    assert feed["next_after"] == events[-1]["position"]
    assert f"after={feed['next_after']}" in feed["next"]
    empty = await api.get(feed["next"])
    assert empty["results"] == [] and empty["next_after"] == feed["next_after"]


async def test_feed_filters(api):
    pipeline_a, pipeline_b = await api.pipeline("a"), await api.pipeline("b")
    run_a, run_b = await api.run(pipeline_a["id"]), await api.run(pipeline_b["id"])
    await api.move(run_a, "running")
    await api.move(run_b, "queued")

    async def pairs(query: str):
        return [(e["run_id"], e["version"]) for e in (await api.get("/events/?" + query))["results"]]

    assert await pairs(f"pipeline_id={pipeline_a['id']}") == [(run_a["id"], 1), (run_a["id"], 2)]
    assert await pairs(f"run_id={run_b['id']}") == [(run_b["id"], 1), (run_b["id"], 2)]
    assert await pairs("type=run.created") == [(run_a["id"], 1), (run_b["id"], 1)]
    assert len(await pairs("actor=tester")) == 4 and await pairs("actor=nobody") == []
    everything = (await api.get("/events/"))["results"]
    cut = everything[2]["occurred_at"]
    assert await pairs(f"since={_at(cut)}") == [(e["run_id"], e["version"]) for e in everything[2:]]
    assert await pairs(f"until={_at(cut)}") == [(e["run_id"], e["version"]) for e in everything[:2]]
    assert len(await pairs("limit=3")) == 3
    await api.get("/events/?limit=1001", status=400)
    await api.get("/events/?after=-1", status=400)
    await api.get("/events/?wait=31", status=400)


class TestLongPollWakeUp:
    """NOTIFY wakes a long-poll at another process's commit: the app's safety re-query tick
    is made far longer than the poll's answer may take, so only the wake-up can answer it in
    time. The write goes through a second app (another process, as far as the first can
    tell: a write of its own wakes its long-polls without NOTIFY)."""

    TICK = 60.0
    WAIT = 10

    @pytest.fixture
    def config(self, db_dsn) -> Config:
        return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=20,
                      token_cache_seconds=0.5,
                      feed_tick_seconds=self.TICK)

    async def _poll_then_append(self, api, client, enterprise, other
                                ) -> tuple[dict, float, dict]:
        pipeline = await api.pipeline()
        head = (await api.get("/events/"))["next_after"]
        waiters = client.server.app[FEED_WAITERS]
        waiting = asyncio.create_task(api.get(f"/events/?after={head}&wait={self.WAIT}"))
        await wait_until(lambda: waiters.waiting(enterprise), what="the long-poll to be waiting")
        run = await api.with_client(other).run(pipeline["id"])  # committed when answered
        committed = time.monotonic()
        feed = await waiting
        return feed, time.monotonic() - committed, run

    @pytest.fixture
    async def other(self, aiohttp_client, config):
        return await aiohttp_client(create_app(config))

    async def test_feed_long_poll_wakes_on_a_new_event(self, api, client, enterprise, other):
        feed, latency, run = await self._poll_then_append(api, client, enterprise, other)
        assert [e["run_id"] for e in feed["results"]] == [run["id"]]
        assert latency < self.WAIT / 2, latency

    @pytest.fixture
    def notify_lost(self, monkeypatch):
        """The listener LISTENs where nothing is notified (set up before the app starts)."""
        lost = dataclasses.replace(positions.FEED_QUERIES, channel="nobody_notifies_this")
        monkeypatch.setattr(positions, "FEED_QUERIES", lost)

    async def test_without_notify_the_long_poll_answers_only_at_its_deadline(
            self, notify_lost, api, client, enterprise, other):
        """The control: the test above fails when NOTIFY is broken."""
        feed, latency, run = await self._poll_then_append(api, client, enterprise, other)
        assert [e["run_id"] for e in feed["results"]] == [run["id"]]
        assert latency > self.WAIT / 2, latency


async def test_feed_long_poll_times_out_empty(api):
    head = (await api.get("/events/"))["next_after"]
    started = time.monotonic()
    feed = await api.get(f"/events/?after={head}&wait=1")
    assert feed["results"] == [] and feed["next_after"] == head
    assert 0.9 <= time.monotonic() - started < 10  # its 1 s wait, and room for a loaded machine
