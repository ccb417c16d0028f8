"""Replay and verify: fold run_events with the live path's lifecycle, compare, repair.

Replay is safe while the service runs:
1. Scan: in one REPEATABLE READ snapshot, stream every run (its events as arrays in
   version order) with its projection row, fold each run with lifecycle.apply and note
   every row that differs; run_counts is compared with the fold's counts too.
2. Patch without blocking anyone: write the differing rows, each guarded by the version
   seen in the scan, so a row a live write has moved on since is left alone.
3. Catch up in one short transaction that blocks writers (not readers): re-fold the runs
   that got events after the snapshot or were skipped in 2, and write them. Commit.
The scan streams (no query per run) and holds one run in memory at a time.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import lifecycle
from .store import counts
from .store import replay as sql

BATCH = 1000


@dataclass
class Drift:
    run_key: tuple[str, Any]
    fields: list[str]
    expected: dict | None
    actual: dict | None


@dataclass
class CounterDrift:
    key: tuple[str, Any, str]  # (enterprise_id, pipeline_id, status) of a run_counts row
    expected: int  # live runs the fold gives
    actual: int  # what run_counts says


@dataclass
class Scan:
    events: int = 0
    runs: int = 0
    heads: dict[str, int] = field(default_factory=dict)
    drifts: list[Drift] = field(default_factory=list)
    # run_counts rows that differ from the fold (what verify reports).
    counter_drifts: list[CounterDrift] = field(default_factory=list)
    # run_counts minus the projection rows' own counts, in the snapshot: every write moves
    # both alike (store/counts.py), so subtracting this later repairs the counters.
    counter_errors: Counter = field(default_factory=Counter)
    # Runs whose event versions are not consecutive (versions are unique by the write
    # path's row lock, not by an index: see schema.sql, run_events).
    version_drifts: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.drifts or self.counter_drifts or self.version_drifts)


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
    expected_counts: Counter = Counter()  # live runs per (enterprise, pipeline, status)
    projected_counts: Counter = Counter()  # projection rows per the same key
    apply, heads = lifecycle.apply, result.heads
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(sql.SCAN_SETTINGS)
        async for record in conn.cursor(sql.RUNS_WITH_PROJECTION, prefetch=sql.PREFETCH):
            enterprise_id, run_id, versions = record[0], record[1], record[3]
            events = zip(versions, record[4], record[5], record[6], record[7], record[8],
                         record[9])
            if any(a >= b for a, b in zip(versions, versions[1:])):
                events = sorted(events, key=lambda e: e[0])  # out of order, or repeated
                versions = [e[0] for e in events]
            if versions[-1] - versions[0] != len(versions) - 1 or len(set(versions)) != len(
                    versions):
                result.version_drifts.append((enterprise_id, run_id))
            run = None
            for version, kind, to_status, actor_id, at, pipeline_id, data in events:
                run = apply(run, {"type": kind, "version": version, "to_status": to_status,
                                  "actor_id": actor_id, "occurred_at": at, "data": data,
                                  "enterprise_id": enterprise_id, "run_id": run_id,
                                  "pipeline_id": pipeline_id})
            result.events += len(versions)
            result.runs += 1
            if record[2] > heads.get(enterprise_id, 0):
                heads[enterprise_id] = record[2]
            actual = _projection_of(record)
            drift = _compare((enterprise_id, run_id), _expected(run), actual)
            if drift is not None:
                result.drifts.append(drift)
            if run is not None:
                expected_counts[(enterprise_id, run["pipeline_id"], run["status"])] += 1
            if actual is not None:
                projected_counts[(enterprise_id, actual["pipeline_id"], actual["status"])] += 1
        for row in await conn.fetch(sql.ORPHAN_ROWS):
            actual = {**dict(row), "stage_runs": []}
            result.drifts.append(_compare((row["enterprise_id"], row["id"]), None, actual))
            projected_counts[(row["enterprise_id"], row["pipeline_id"], row["status"])] += 1
        stored = Counter({(r["enterprise_id"], r["pipeline_id"], r["status"]): r["n"]
                          for r in await conn.fetch(counts.ALL_COUNTERS)})
        for k in sorted(stored.keys() | expected_counts.keys() | projected_counts.keys(),
                        key=str):
            if stored[k] != expected_counts[k]:
                result.counter_drifts.append(CounterDrift(k, expected_counts[k], stored[k]))
            if stored[k] != projected_counts[k]:
                result.counter_errors[k] = stored[k] - projected_counts[k]
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
    counters_repaired: int = 0
    version_drifts: int = 0  # runs with non-consecutive versions: reported, not repairable

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
    caught_up = await _catch_up(conn, result.heads, {item[0] for item in skipped},
                                result.counter_errors)
    return ReplayReport(result.events, result.runs, len(result.drifts), caught_up,
                        time.perf_counter() - started,
                        counters_repaired=len(result.counter_errors),
                        version_drifts=len(result.version_drifts))


async def _catch_up(conn: asyncpg.Connection, heads: dict[str, int], keys: set,
                    counter_errors: Counter) -> int:
    """Under a short write lock: re-fold the runs changed since the scan, and the skipped;
    take the counters' snapshot error back out (patches and writes never change it)."""
    async with conn.transaction():
        await counts.apply_deltas(conn, Counter({k: -v for k, v in counter_errors.items()}))
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
