"""Replay and verify: fold run_events with the live path's lifecycle, compare, repair.

Replay is safe while the service runs:
1. Scan: in one REPEATABLE READ snapshot, stream every run (its events as arrays in
   version order) with its projection row, fold each run with the lifecycle's fold and note
   every row that differs; run_counts is compared with the fold's counts too. A large
   scan is split across 2 processes that share the snapshot (scan_parts.py).
2. Patch without blocking anyone: write the differing rows, each guarded by the version
   seen in the scan, so a row a live write has moved on since is left alone.
3. Catch up in one short transaction that blocks writers (not readers): re-fold the runs
   that got events after the snapshot or were skipped in 2, and write them. Commit.
The scan streams (no query per run) and holds one run in memory at a time.
"""
from __future__ import annotations

import asyncio
import operator
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import asyncpg

from service.domain import lifecycle
from service.app import scan_parts
from service.infra.db import init_connection
from service.store import counts
from service.store import replay as sql

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
    parts: int = 1  # processes the scan was split across (scan_parts.py)
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


_ROW = operator.itemgetter(*sql.PROJECTION_COLUMNS)
_STAGE_ROW = operator.itemgetter(*sql.STAGE_RUN_ARRAY_COLUMNS)
_S_ORDINAL = sql.STAGE_RUN_ARRAY_COLUMNS.index("ordinal")
_HAS_ROW = sql.ROW_AT - 1
_P_PIPELINE = sql.ROW_AT + sql.PROJECTION_COLUMNS.index("pipeline_id")
_P_STATUS = sql.ROW_AT + sql.PROJECTION_COLUMNS.index("status")
_VERSION = operator.itemgetter(1)  # of a lifecycle.EVENT_FIELDS tuple


def _projection_of(record: asyncpg.Record) -> dict | None:
    if not record[_HAS_ROW]:
        return None
    row = dict(zip(sql.PROJECTION_COLUMNS, record[sql.ROW_AT:sql.STAGE_RUNS_AT]))
    keys = {"enterprise_id": record[0], "run_id": record[1]}
    row["stage_runs"] = [{**keys, **dict(zip(sql.STAGE_RUN_ARRAY_COLUMNS, s))}
                         for s in _stage_rows(record)]
    return row


def _stage_rows(record: asyncpg.Record) -> list[tuple]:
    """The record's projected stage runs in ordinal order, each a tuple of
    STAGE_RUN_ARRAY_COLUMNS."""
    arrays = record[sql.STAGE_RUNS_AT:]
    if arrays[0] is None:
        return []
    rows = list(zip(*arrays))
    ordinals = arrays[_S_ORDINAL]
    if any(a > b for a, b in zip(ordinals, ordinals[1:])):  # see RUNS_WITH_PROJECTION
        rows.sort(key=operator.itemgetter(_S_ORDINAL))
    return rows


def _expected(run: dict | None) -> dict | None:
    if run is None:
        return None
    row = {c: run[c] for c in sql.PROJECTION_COLUMNS}
    row["stage_runs"] = [{c: s[c] for c in sql.STAGE_RUN_COLUMNS} for s in run["stage_runs"]]
    return row


def _unchanged(run: dict | None, record: asyncpg.Record) -> bool:
    """Whether the record's projection is the fold's, compared as tuples (no dict per row:
    this runs for every run, and _compare names the differences of the rare rest)."""
    if run is None or not record[_HAS_ROW]:
        return run is None and not record[_HAS_ROW]
    return (_ROW(run) == record[sql.ROW_AT:sql.STAGE_RUNS_AT]
            and list(map(_STAGE_ROW, run["stage_runs"])) == _stage_rows(record))


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


def _events(record: asyncpg.Record) -> tuple[Any, bool]:
    """The record's events as lifecycle.fold_rows takes them, in version order; and whether
    the versions are consecutive."""
    enterprise_id, run_id, versions = record[0], record[1], record[3]
    events = zip(record[4], versions, record[5], record[6], record[7], record[9],
                 repeat(enterprise_id), repeat(run_id), record[8])
    if versions == list(range(versions[0], versions[0] + len(versions))):
        return events, True
    events = sorted(events, key=_VERSION)  # out of order, repeated or missing
    versions = sorted(versions)
    return events, versions == list(range(versions[0], versions[0] + len(versions)))


async def _batches(conn: asyncpg.Connection, query: str, size: int, *args):
    """The query's rows, a batch at a time, with the next batch's fetch already sent: the
    server makes it while the caller folds this one (2 cores: both at work, not in turn)."""
    cursor = await conn.cursor(query, *args)
    pending = asyncio.ensure_future(cursor.fetch(size))
    try:
        while pending is not None:
            batch = await pending
            pending = asyncio.ensure_future(cursor.fetch(size)) if len(batch) == size else None
            await asyncio.sleep(0)  # the fetch goes out before the caller's work
            yield batch
    finally:
        if pending is not None:  # the caller stopped early: the connection must be free
            await asyncio.gather(pending, return_exceptions=True)


class _Counts:
    """Live runs per (enterprise, pipeline, status): as folded, and as projected."""

    def __init__(self):
        self.expected: Counter = Counter()
        self.projected: Counter = Counter()


def _scan_batch(batch: list, result: Scan, counted: _Counts) -> None:
    fold, heads = lifecycle.fold_rows, result.heads
    for record in batch:
        enterprise_id, run_id = record[0], record[1]
        events, consecutive = _events(record)
        if not consecutive:
            result.version_drifts.append((enterprise_id, run_id))
        run = fold(events)
        result.events += len(record[3])
        result.runs += 1
        if record[2] > heads.get(enterprise_id, 0):
            heads[enterprise_id] = record[2]
        if not _unchanged(run, record):
            drift = _compare((enterprise_id, run_id), _expected(run), _projection_of(record))
            if drift is not None:
                result.drifts.append(drift)
        if run is not None:
            counted.expected[(enterprise_id, run["pipeline_id"], run["status"])] += 1
        if record[_HAS_ROW]:
            counted.projected[(enterprise_id, record[_P_PIPELINE], record[_P_STATUS])] += 1


async def scan(conn: asyncpg.Connection, dsn: str | None = None) -> Scan:
    """Fold every run in one snapshot and compare with its projection row.

    With the database's dsn, a large scan is split: other processes fold a share of the
    runs each, in the same snapshot (scan_parts.py).
    """
    result, counted = Scan(), _Counts()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(sql.SCAN_SETTINGS)
        ranges = scan_parts.bounds(await scan_parts.count_parts(conn, dsn))
        result.parts = len(ranges)
        async with scan_parts.in_other_processes(conn, scan_part_alone, dsn,
                                                 ranges[1:]) as others:
            await _scan_part(conn, ranges[0], result, counted)
            for other in others:
                _merge(result, counted, *await other)
        await _scan_rest(conn, result, counted)
    return result


async def _scan_part(conn: asyncpg.Connection, bounds: tuple, result: Scan,
                     counted: _Counts) -> None:
    """The runs with ids in bounds: folded and compared, in the caller's transaction."""
    query = sql.RUNS_WITH_PROJECTION
    async with aclosing(_batches(conn, query, sql.PREFETCH, *bounds)) as batches:
        async for batch in batches:
            _scan_batch(batch, result, counted)


def scan_part_alone(dsn: str, snapshot: str, bounds: tuple) -> tuple[Scan, _Counts]:
    """_scan_part in a process of its own, in the exported snapshot given."""
    return asyncio.run(_scan_part_alone(dsn, snapshot, bounds))


async def _scan_part_alone(dsn: str, snapshot: str, bounds: tuple) -> tuple[Scan, _Counts]:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        result, counted = Scan(), _Counts()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(sql.set_snapshot(snapshot))  # first, as PostgreSQL requires
            await conn.execute(sql.SCAN_SETTINGS)
            await _scan_part(conn, bounds, result, counted)
        return result, counted
    finally:
        await conn.close()


def _merge(result: Scan, counted: _Counts, part: Scan, part_counted: _Counts) -> None:
    result.events += part.events
    result.runs += part.runs
    for enterprise_id, head in part.heads.items():
        if head > result.heads.get(enterprise_id, 0):
            result.heads[enterprise_id] = head
    result.drifts += part.drifts
    result.version_drifts += part.version_drifts
    counted.expected.update(part_counted.expected)
    counted.projected.update(part_counted.projected)


async def _scan_rest(conn: asyncpg.Connection, result: Scan, counted: _Counts) -> None:
    """Rows without events, the counters, stage runs without their run: in the snapshot."""
    for row in await conn.fetch(sql.ORPHAN_ROWS):
        actual = {**dict(row), "stage_runs": []}
        result.drifts.append(_compare((row["enterprise_id"], row["id"]), None, actual))
        counted.projected[(row["enterprise_id"], row["pipeline_id"], row["status"])] += 1
    stored = Counter({(r["enterprise_id"], r["pipeline_id"], r["status"]): r["n"]
                      for r in await conn.fetch(counts.ALL_COUNTERS)})
    expected, projected = counted.expected, counted.projected
    for k in sorted(stored.keys() | expected.keys() | projected.keys(), key=str):
        if stored[k] != expected[k]:
            result.counter_drifts.append(CounterDrift(k, expected[k], stored[k]))
        if stored[k] != projected[k]:
            result.counter_errors[k] = stored[k] - projected[k]
    known = {d.run_key for d in result.drifts}
    for row in await conn.fetch(sql.ORPHAN_STAGE_RUN_KEYS):
        key = (row["enterprise_id"], row["run_id"])
        if key not in known:
            result.drifts.append(Drift(key, ["<stage runs without their run>"], None, None))


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


async def replay(conn: asyncpg.Connection, dsn: str | None = None) -> ReplayReport:
    """Rebuild the projection from the events; returns what was processed and repaired.
    dsn: the database's, to split a large scan across processes (scan())."""
    if not await conn.fetchval(sql.TRY_REPLAY_LOCK):
        raise RuntimeError("another replay is running")
    try:
        return await _replay(conn, dsn)
    finally:
        await conn.fetchval(sql.UNLOCK_REPLAY)


async def _replay(conn: asyncpg.Connection, dsn: str | None) -> ReplayReport:
    started = time.perf_counter()
    result = await scan(conn, dsn)
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


async def verify(conn: asyncpg.Connection, dsn: str | None = None) -> Scan:
    """Recompute every run from its events and list where the projection differs."""
    return await scan(conn, dsn)
