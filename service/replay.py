"""Replay and verify: fold run_events with the live path's lifecycle, compare, repair.

Replay is safe while the service runs:
1. Scan: in one REPEATABLE READ snapshot, stream every event in run order with the run's
   projection row, fold each run (lifecycle.fold) and note every row that differs.
2. Patch without blocking anyone: write the differing rows, each guarded by the version
   seen in the scan, so a row a live write has moved on since is left alone.
3. Catch up in one short transaction that blocks writers (not readers): re-fold the runs
   that got events after the snapshot or were skipped in 2, and write them. Commit.
The scan streams (no query per event) and holds one run in memory at a time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import lifecycle
from .store import replay as sql

BATCH = 1000


@dataclass
class Drift:
    run_key: tuple[str, Any]
    fields: list[str]
    expected: dict | None
    actual: dict | None


@dataclass
class Scan:
    events: int = 0
    runs: int = 0
    heads: dict[str, int] = field(default_factory=dict)
    drifts: list[Drift] = field(default_factory=list)


def _stage_row(record) -> dict:
    return dict(record)


def _projection_of(record: asyncpg.Record) -> dict | None:
    if not record["has_row"]:
        return None
    row = {c: record["p_" + c] for c in sql.PROJECTION_COLUMNS}
    row["stage_runs"] = [_stage_row(s) for s in record["p_stage_runs"]]
    return row


def _expected(run: dict | None) -> dict | None:
    if run is None:
        return None
    row = {c: run[c] for c in sql.PROJECTION_COLUMNS}
    row["stage_runs"] = [{c: s[c] for c in sql.STAGE_RUN_COLUMNS} for s in run["stage_runs"]]
    return row


def _compare(key, expected: dict | None, actual: dict | None) -> Drift | None:
    if expected == actual:
        return None
    if expected is None or actual is None:
        fields = ["<row missing>" if actual is None else "<row not explained by events>"]
    else:
        fields = [c for c in sql.PROJECTION_COLUMNS if expected[c] != actual[c]]
        if expected["stage_runs"] != actual["stage_runs"]:
            fields.append("stage_runs")
    return Drift(key, fields, expected, actual)


async def scan(conn: asyncpg.Connection) -> Scan:
    """Fold every run in one snapshot and compare with its projection row."""
    result = Scan()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        key, run, actual = None, None, None

        def finish():
            if key is None:
                return
            result.runs += 1
            drift = _compare(key, _expected(run), actual)
            if drift is not None:
                result.drifts.append(drift)

        async for record in conn.cursor(sql.EVENTS_WITH_PROJECTION, prefetch=5000):
            result.events += 1
            record_key = (record["enterprise_id"], record["run_id"])
            if record_key != key:
                finish()
                key, run, actual = record_key, None, _projection_of(record)
            run = lifecycle.apply(run, record)
            heads = result.heads
            if record["position"] > heads.get(record["enterprise_id"], 0):
                heads[record["enterprise_id"]] = record["position"]
        finish()
        for row in await conn.fetch(sql.ORPHAN_ROWS):
            actual = {**dict(row), "stage_runs": []}
            result.drifts.append(_compare((row["enterprise_id"], row["id"]), None, actual))
        known = {d.run_key for d in result.drifts}
        for row in await conn.fetch(sql.ORPHAN_STAGE_RUN_KEYS):
            key = (row["enterprise_id"], row["run_id"])
            if key not in known:
                result.drifts.append(Drift(key, ["<stage runs without their run>"], None, None))
    return result


async def _refold(conn: asyncpg.Connection, enterprise_id: str, run_id) -> dict | None:
    events = await conn.fetch(sql.RUN_EVENTS, enterprise_id, run_id)
    return _expected(lifecycle.fold(events))


async def _actual(conn: asyncpg.Connection, enterprise_id: str, run_id) -> dict | None:
    row = await conn.fetchrow(sql.SELECT_ROW, enterprise_id, run_id)
    stages = [dict(s) for s in await conn.fetch(sql.SELECT_STAGE_ROWS, enterprise_id, run_id)]
    if row is None:
        return None if not stages else {"stage_runs": stages}
    return {**dict(row), "stage_runs": stages}


@dataclass
class ReplayReport:
    events: int
    runs: int
    repaired: int
    caught_up: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


async def replay(conn: asyncpg.Connection) -> ReplayReport:
    """Rebuild the projection from the events; returns what was processed and repaired."""
    if not await conn.fetchval(sql.TRY_REPLAY_LOCK):
        raise RuntimeError("another replay is running")
    try:
        return await _replay(conn)
    finally:
        await conn.fetchval(sql.UNLOCK_REPLAY)


async def _replay(conn: asyncpg.Connection) -> ReplayReport:
    started = time.perf_counter()
    result = await scan(conn)
    items = [(d.run_key, d.expected, (d.actual or {}).get("version")) for d in result.drifts]
    skipped: list[tuple] = []
    for i in range(0, len(items), BATCH):
        async with conn.transaction():
            skipped += await sql.patch_runs(conn, items[i:i + BATCH], guarded=True)
    caught_up = await _catch_up(conn, result.heads, {item[0] for item in skipped})
    return ReplayReport(result.events, result.runs, len(result.drifts), caught_up,
                        time.perf_counter() - started)


async def _catch_up(conn: asyncpg.Connection, heads: dict[str, int], keys: set) -> int:
    """Under a short write lock: re-fold the runs changed since the scan, and the skipped."""
    async with conn.transaction():
        await conn.execute(sql.LOCK_WRITES)
        changed = await conn.fetch(sql.RUNS_CHANGED_SINCE, list(heads), list(heads.values()))
        keys = keys | {(r["enterprise_id"], r["run_id"]) for r in changed}
        items = []
        for enterprise_id, run_id in keys:
            expected = await _refold(conn, enterprise_id, run_id)
            if expected != await _actual(conn, enterprise_id, run_id):
                items.append(((enterprise_id, run_id), expected, None))
        await sql.patch_runs(conn, items, guarded=False)
        return len(keys)


async def verify(conn: asyncpg.Connection) -> Scan:
    """Recompute every run from its events and list where the projection differs."""
    return await scan(conn)
