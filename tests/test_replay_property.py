"""Replay's property: whatever concurrent callers and the sweeper did through the service,
the fold of the events is the live projection (runs, stage runs, counters), verify finds it
clean and replay changes nothing. The writes go through the HTTP API: runs of pipelines with
stages, without stages and with a 1 s timeout; run moves (one-statement ones, and terminal
ones that cascade to stage runs), stage-run moves that derive the run's outcome, deletes,
and timeouts by the sweeper, from several writers at once. Every event type and every
automatic move must have occurred over the test, or it proves nothing about them."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.app.replay import replay, verify
from service.config import Config
from service.domain import lifecycle as lc
from service.infra.db import init_connection
from service.web.app import create_app
from tests.helpers import Api, make_token, wait_until, as_runtime

PIPELINES = {  # kind -> the pipeline's body
    "staged": {"name": "staged", "stages": [{"name": "build"}, {"name": "test"}]},
    "bare": {"name": "bare", "stages": []},  # its runs are invalid at once (system)
    "timed": {"name": "timed", "timeout_seconds": 1, "stages": [{"name": "only"}]},
}
# An operation of one writer; a run is named by its index in its enterprise's runs so far
# (-1: the newest), whoever created it.
op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(sorted(PIPELINES))),
    st.tuples(st.just("move"), st.integers(-3, 3), st.sampled_from(lc.RUN_STATUSES)),
    st.tuples(st.just("stage"), st.integers(-3, 3), st.integers(0, 1),
              st.sampled_from(lc.STAGE_RUN_STATUSES)),
    st.tuples(st.just("delete"), st.integers(-3, 3)),
)
programs = st.lists(st.lists(op, max_size=12), min_size=1, max_size=3)  # one list a writer

# One writer doing every kind of move once (runs -1 is the newest).
EVERY_KIND = [
    ("create", "staged"), ("stage", -1, 0, "running"),  # a stage started: run running
    ("stage", -1, 0, "complete"), ("stage", -1, 0, "success"), ("stage", -1, 1, "running"),
    ("stage", -1, 1, "complete"),
    ("stage", -1, 1, "success"),  # every stage run ended: complete, then success
    ("create", "staged"), ("stage", -1, 0, "running"), ("stage", -1, 0, "complete"),
    ("stage", -1, 0, "failure"), ("stage", -1, 1, "running"), ("stage", -1, 1, "complete"),
    ("stage", -1, 1, "success"),  # complete, then failure
    ("create", "staged"), ("move", -1, "queued"), ("move", -1, "running"),
    ("move", -1, "cancelled"),  # a terminal move: its stage runs are cancelled
    ("create", "bare"), ("delete", -1),  # invalid at once, then deleted
    ("create", "timed"), ("move", -1, "running"),  # the sweeper times it out, and its stage
]
# (type, by the system, to_status) of every kind of event the test must have seen.
EXPECTED = {
    (lc.RUN_CREATED, False, "pending"), (lc.RUN_STATUS_CHANGED, False, "running"),
    (lc.RUN_STATUS_CHANGED, False, "cancelled"), (lc.RUN_DELETED, False, None),
    (lc.STAGE_RUN_STATUS_CHANGED, False, "running"),
    (lc.RUN_STATUS_CHANGED, True, "invalid"),  # no stages
    (lc.RUN_STATUS_CHANGED, True, "running"),  # a stage run started
    (lc.RUN_STATUS_CHANGED, True, "complete"),  # every stage run ended
    (lc.RUN_STATUS_CHANGED, True, "success"), (lc.RUN_STATUS_CHANGED, True, "failure"),
    (lc.STAGE_RUN_STATUS_CHANGED, True, "cancelled"),  # cascade of a terminal move
    (lc.RUN_STATUS_CHANGED, True, "timeout"), (lc.STAGE_RUN_STATUS_CHANGED, True, "timeout"),
}
SEEN = "SELECT DISTINCT type, actor = $1 AS system, to_status FROM run_events"
COUNTER_MISMATCHES = """
SELECT * FROM run_counts c
FULL JOIN (SELECT enterprise_id, pipeline_id, status, count(*) AS n FROM pipeline_runs
           GROUP BY enterprise_id, pipeline_id, status) r
  USING (enterprise_id, pipeline_id, status)
WHERE coalesce(c.n, 0) <> coalesce(r.n, 0)"""
OPEN_TIMED = "SELECT count(*) FROM pipeline_runs WHERE pipeline_id = ANY($1) AND ended_at IS NULL"


class Enterprise:
    """One enterprise's caller, pipelines and runs (shared by its writers)."""

    def __init__(self, api: Api, pipelines: dict[str, dict]):
        self.api, self.pipelines, self.runs = api, pipelines, []

    def run(self, ref: int) -> dict | None:
        return self.runs[ref % len(self.runs)] if self.runs else None

    async def do(self, operation: tuple) -> None:
        kind, *args = operation
        api = self.api
        if kind == "create":
            self.runs.append(await api.run(self.pipelines[args[0]]["id"]))
            return
        run = self.run(args[0])
        if run is None:
            return
        path = f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"
        if kind == "move":
            await api.put(path, {"status": args[1]}, status=(200, 404, 409))
        elif kind == "delete":
            await api.delete(path, status=(200, 404))
        else:
            stage_runs = await api.get(f"/runs/{run['id']}/stageruns/", status=(200, 404))
            if api.last.status == 200 and stage_runs["results"]:
                stage_run = stage_runs["results"][args[1] % len(stage_runs["results"])]
                await api.put(f"/runs/{run['id']}/stageruns/{stage_run['id']}/",
                              {"status": args[2]}, status=(200, 404, 409))


async def projection(conn: asyncpg.Connection) -> tuple[list, list, list]:
    return (await conn.fetch("SELECT * FROM pipeline_runs ORDER BY enterprise_id, id"),
            await conn.fetch("SELECT * FROM stage_runs ORDER BY enterprise_id, id"),
            await conn.fetch("SELECT * FROM run_counts WHERE n <> 0 ORDER BY 1, 2, 3"))


async def assert_folds(conn: asyncpg.Connection) -> None:
    """Each run's rows equal the fold of its events, stage runs included (independently of
    verify's own comparison), and the counters count the rows."""
    events: dict = {}
    for event in await conn.fetch("SELECT * FROM run_events ORDER BY run_id, version"):
        events.setdefault(event["run_id"], []).append(dict(event))
    rows = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM pipeline_runs")}
    stage_rows = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM stage_runs")}
    for run_id, run_events in events.items():
        folded = lc.fold(run_events)
        if folded is None:
            assert run_id not in rows
            continue
        row = rows.pop(run_id)
        assert row == {key: folded[key] for key in row}
        for stage_run in folded["stage_runs"]:
            stored = stage_rows.pop(stage_run["id"])
            assert stored == {key: stage_run[key] for key in stored}
    assert rows == {} and stage_rows == {}  # nothing the events do not explain
    assert await conn.fetch(COUNTER_MISMATCHES) == []


async def scenario(dsn: str, writers: list[list[tuple]], seen: set) -> None:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    config = Config(database_url=as_runtime(dsn), pool_min=1, pool_max=10, token_cache_seconds=0.5,
                    timeout_sweep_seconds=0.2)
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        enterprises = []
        for _ in range(2):
            api = Api(client, await make_token(conn, f"prop-{uuid.uuid4().hex[:10]}"))
            pipelines = {kind: await api.post("/pipelines/", body)
                         for kind, body in PIPELINES.items()}
            enterprises.append(Enterprise(api, pipelines))

        async def write(index: int, program: list[tuple]) -> None:
            for operation in program:
                await enterprises[index % 2].do(operation)

        await asyncio.gather(*(write(i, program) for i, program in enumerate(writers)))
        timed = [uuid.UUID(e.pipelines["timed"]["id"]) for e in enterprises]
        # Runs of 1 s pipelines end by the sweeper's hand (the system path), writers done.

        async def timed_out() -> bool:
            return await conn.fetchval(OPEN_TIMED, timed) == 0

        await wait_until(timed_out, 30, "the sweeper to time out the 1 s runs")
    finally:
        await client.close()  # no writer, no sweeper from here on
    try:
        seen.update(tuple(r) for r in await conn.fetch(SEEN, lc.SYSTEM))
        await assert_folds(conn)
        live = await projection(conn)
        scan = await verify(conn)
        assert scan.clean, (scan.drifts, scan.counter_drifts, scan.version_drifts)
        report = await replay(conn)
        assert (report.repaired, report.counters_repaired) == (0, 0)
        assert await projection(conn) == live
    finally:
        await conn.close()


def test_replay_equals_the_live_projection_of_concurrent_api_writes(own_db):
    seen: set = set()

    @settings(max_examples=10, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(writers=programs)
    @example(writers=[EVERY_KIND])
    @example(writers=[EVERY_KIND, EVERY_KIND, EVERY_KIND])  # the same runs, raced
    def check(writers):
        asyncio.run(scenario(own_db, writers, seen))

    check()
    assert EXPECTED - seen == set(), "these kinds of event never occurred"
