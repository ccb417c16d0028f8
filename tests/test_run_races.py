"""Racing changes of one run are each checked against its current state; If-Match lets one
through; run numbers stay 1..n under many concurrent creates (real commits, own database)."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from service.config import Config
from service.domain import lifecycle as lc
from tests.helpers import assert_projection, run_path, send, as_runtime


def status_after(events: list[dict]) -> dict[int, str]:
    """The run's status once each version is applied."""
    result, status = {}, None
    for event in events:
        if event["type"].startswith("run.") and event["to_status"] is not None:
            status = event["to_status"]
        result[event["version"]] = status
    return result


def caller_changes(events: list[dict]) -> list[tuple[str, int]]:
    """Each caller's change: (its target, the version once its automatic follow-ups are in)."""
    changes: list[list] = []
    for event in events[1:]:
        if event["actor"] != lc.SYSTEM:
            changes.append([event["to_status"], event["version"]])
        elif changes:
            changes[-1][1] = event["version"]
    return [tuple(c) for c in changes]


class TestConcurrency:
    """Real commits on a database of the module's own, through a pool with many connections."""

    POOL_MAX = 50

    @pytest.fixture
    def db_dsn(self, own_db):
        return own_db

    @pytest.fixture
    def config(self, db_dsn) -> Config:
        return Config(database_url=as_runtime(db_dsn), pool_min=1, pool_max=self.POOL_MAX,
                      token_cache_seconds=0.5)

    async def test_racing_changes_are_each_checked_against_the_current_state(self, api, db):
        pipeline = await api.pipeline(stages=("build", "test"))
        run = await api.move(await api.run(pipeline["id"]), "running")
        start = run["version"]
        targets = ["waiting", "running", "waiting", "complete", "running", "waiting",
                   "cancelled", "running", "success", "waiting"] * 2
        answers = await asyncio.gather(*(send(api, "PUT", run_path(run), json={"status": t})
                                         for t in targets))
        final = await api.get(run_path(run))
        events = await assert_projection(db, final)  # versions 1..n, no gap; projection = fold
        after = status_after(events)
        run_events = [e for e in events if e["type"].startswith("run.")]
        for before, event in zip(run_events, run_events[1:]):  # one legal chain
            assert event["from_status"] == before["to_status"]
            assert lc.is_legal(event["from_status"], event["to_status"])
        # Some serial order explains every answer: each change was made by one 200 whose
        # answer is the run right after it; every other 200 was a no-op on the state it
        # saw, every 409 refused a move that was illegal from a state the run really had.
        unexplained = [c for c in caller_changes(events) if c[1] > start]
        for target, (status, text, _) in zip(targets, answers):
            assert status in (200, 409), text
            content = json.loads(text)["content"]
            if status == 409:
                assert content["current_status"] in after.values()
                assert not lc.is_legal(content["current_status"], target)
                continue
            assert content["status"] == after[content["version"]], (target, content)
            if (target, content["version"]) in unexplained:
                unexplained.remove((target, content["version"]))
            else:
                assert content["status"] == target  # a no-op: the run was already there
        assert unexplained == []

    async def test_racing_changes_with_one_if_match_let_exactly_one_through(self, api, db):
        run = await api.move(await api.run((await api.pipeline())["id"]), "running")
        targets = ["waiting", "complete", "cancelled", "timeout"] * 5
        answers = await asyncio.gather(*(
            send(api, "PUT", run_path(run), json={"status": t},
                 headers={"If-Match": f'"{run["version"]}"'}) for t in targets))
        statuses = [status for status, _, _ in answers]
        assert sorted(statuses) == [200] + [412] * (len(targets) - 1)
        winner = json.loads(answers[statuses.index(200)][1])["content"]
        final = await api.get(run_path(run))
        events = await assert_projection(db, final)
        assert [e["to_status"] for e in events
                if e["version"] > run["version"] and e["actor"] != lc.SYSTEM] == [winner["status"]]
        assert final["version"] == winner["version"]

    async def test_120_concurrent_creates_number_runs_1_to_120(self, api, db):
        pipeline = await api.pipeline()
        n = 120
        runs = await asyncio.gather(*(api.run(pipeline["id"]) for _ in range(n)))
        assert sorted(r["run_number"] for r in runs) == list(range(1, n + 1))
        assert len({r["id"] for r in runs}) == n
        pid = uuid.UUID(pipeline["id"])
        stored = await db.fetch("SELECT run_number FROM pipeline_runs WHERE pipeline_id = $1 "
                                "ORDER BY run_number", pid)
        assert [r["run_number"] for r in stored] == list(range(1, n + 1))
        created = await db.fetch("SELECT run_id, data FROM run_events WHERE pipeline_id = $1 "
                                 "AND type = $2", pid, lc.RUN_CREATED)
        numbers = {str(e["run_id"]): e["data"]["run_number"] for e in created}
        assert numbers == {r["id"]: r["run_number"] for r in runs}
        assert await db.fetchval("SELECT last_run_number FROM pipelines WHERE id = $1", pid) == n
