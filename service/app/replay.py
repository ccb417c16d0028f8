"""Replay and verify: fold run_events with the live path's lifecycle, compare, repair.

Replay is safe while the service runs:
1. Scan: in one REPEATABLE READ snapshot, read the event log in the order it was written
   (a sequential read) and fold each run in memory as its events pass by, with the
   lifecycle's fold; then read the projection rows and note every one that differs from
   its run's fold; the counter tables (run_counts, run_insights: TABLES) are compared with
   what the runs count, read meanwhile on a connection of their own. A large scan is split
   by run id across 2 processes that share the snapshot, and into more run-id ranges,
   folded one after another, when the folds of all runs would not fit in memory
   (scan_parts.py).
2. Patch without blocking anyone: write the differing rows, each guarded by the version
   seen in the scan, so a row a live write has moved on since is left alone.
3. Catch up in one short transaction that blocks writers (not readers): re-fold the runs
   that got events after the snapshot or were skipped in 2, and write them. Commit.
The scan streams (no query per run, but for the rare run whose events come out of version
order) and holds the folds of one run-id range in memory.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import marshal
import operator
import time
from collections import Counter, defaultdict
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import asyncpg

from service.domain import insights as insight_keys
from service.domain import lifecycle
from service.app import scan_parts
from service.infra.db import init_connection
from service.store import counts
from service.store import insights as insights_store
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
class InsightDrift:
    key: tuple  # (enterprise_id, hour, pipeline_id, metric, bin) of a run_insights row
    expected: int  # runs the fold puts under the key
    actual: int  # what run_insights says
    table: str = "run_insights"  # the counter table (see TABLES)


@dataclass
class RecoveryDrift:
    key: tuple  # (enterprise_id, pipeline_id, run_id) of the success that ends a streak
    expected: tuple | None  # (recovered_at, failed_at) the runs give, None: no recovery
    actual: tuple | None  # what run_recoveries says


@dataclass
class TotalDrift:
    key: tuple  # (enterprise_id, pipeline_id, at) of a run_insights_totals row
    fields: list[str]  # the columns that differ (all of them: a row missing or surplus)
    expected: tuple | None  # the row (TOTAL_COLUMNS) the fold's keys and the recoveries give
    actual: tuple | None  # what run_insights_totals says


@dataclass
class ClosedDrift:
    enterprise_id: str
    through: datetime  # the watermark run_insights_closed holds
    why: str  # "not an hour start"
    pipelines: set  # the enterprise's pipelines with running totals (replay rebuilds them)


@dataclass
class Scan:
    events: int = 0
    runs: int = 0
    parts: int = 1  # processes the scan was split across (scan_parts.py)
    ranges: int = 1  # run-id ranges folded one after another (memory: scan_parts.py)
    heads: dict[str, int] = field(default_factory=dict)
    drifts: list[Drift] = field(default_factory=list)
    # Projection rows whose run has no events: reported after the other drifts.
    orphans: list[Drift] = field(default_factory=list)
    # run_counts rows that differ from the fold (what verify reports).
    counter_drifts: list[CounterDrift] = field(default_factory=list)
    # run_counts minus the projection rows' own counts, in the snapshot: every write moves
    # both alike (store/counts.py), so subtracting this later repairs the counters.
    counter_errors: Counter = field(default_factory=Counter)
    # Runs whose event versions are not consecutive (versions are unique by the write
    # path's row lock, not by an index: see schema.sql, run_events).
    version_drifts: list[tuple[str, Any]] = field(default_factory=list)
    # Insights rows that differ from the fold, and per insights table (TABLES) its rows
    # minus the projection rows' own keys in the snapshot (repaired like counter_errors).
    insight_drifts: list[InsightDrift] = field(default_factory=list)
    insight_errors: dict[str, Counter] = field(default_factory=dict)
    # run_recoveries rows that differ from the recomputation over the runs projection.
    recovery_drifts: list[RecoveryDrift] = field(default_factory=list)
    # run_insights_totals rows that differ from the running totals of the fold's keys (and
    # run_recoveries).
    total_drifts: list[TotalDrift] = field(default_factory=list)
    # run_insights_closed watermarks that are not an hour start (the rows are checked as
    # total_drifts against each watermark: rows of periods at or after it are surplus).
    closed_drifts: list[ClosedDrift] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.drifts or self.counter_drifts or self.version_drifts
                    or self.insight_drifts or self.recovery_drifts or self.total_drifts
                    or self.closed_drifts)


_ROW = operator.itemgetter(*sql.PROJECTION_COLUMNS)
_STAGE_ROW = operator.itemgetter(*sql.STAGE_RUN_ARRAY_COLUMNS)
_S_ORDINAL = sql.STAGE_RUN_ARRAY_COLUMNS.index("ordinal")
_HAS_ROW = sql.ROW_AT - 1  # always true in PROJECTION_ROWS; _projection_of's None: no row
_P_PIPELINE = sql.ROW_AT + sql.PROJECTION_COLUMNS.index("pipeline_id")
_P_STAMPS = operator.itemgetter(*(sql.ROW_AT + sql.PROJECTION_COLUMNS.index(c) for c in (
    "status", "created_at", "started_at", "ended_at")))


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
    if any(a > b for a, b in zip(ordinals, ordinals[1:])):  # see PROJECTION_ROWS
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


def _fold_events(batch: list, folds: dict, early: dict, irregular: set) -> None:
    """Fold each event (a row of sql.EVENTS_IN_LOG_ORDER) into its run's fold, in place.

    folds maps (enterprise_id, run_id) to [last version folded, the run as folded so far].
    The log is read in the heap's order, which is the order of appends but for local
    reorderings (a row goes where there is room): an event ahead of its run's next version
    waits in `early` ({version: event} per run) until the versions before it came. A
    version seen twice marks the run irregular (re-read in version order after the scan:
    _refold_irregular); so does, after the scan, a run with events still waiting.
    """
    step, get = lifecycle.step, folds.get
    for event in batch:
        key = (event[0], event[1])
        entry = get(key)
        if entry is None:
            folds[key] = entry = [0, None]
        version = event[2]
        if version != entry[0] + 1:
            waiting = early.setdefault(key, {})
            if version <= entry[0] or version in waiting:
                irregular.add(key)
            waiting[version] = event
            continue
        entry[0] = version
        entry[1] = step(entry[1], event[3], version, event[4], event[5], event[6], event[8],
                        key[0], key[1], event[7])
        if early and key in early:
            _fold_waiting(key, entry, early)


def _fold_waiting(key: tuple, entry: list, early: dict) -> None:
    """Fold the run's waiting events that now come next."""
    waiting = early[key]
    while entry[0] + 1 in waiting:
        event = waiting.pop(entry[0] + 1)
        entry[0] = event[2]
        entry[1] = lifecycle.step(entry[1], event[3], event[2], event[4], event[5], event[6],
                                  event[8], key[0], key[1], event[7])
    if not waiting:
        del early[key]


async def _refold_irregular(conn: asyncpg.Connection, folds: dict, irregular: set,
                            result: Scan) -> None:
    """The irregular runs folded from their events in version order (in the snapshot);
    those whose versions are not consecutive are reported."""
    for key in sorted(irregular, key=str):
        rows = await conn.fetch(sql.RUN_EVENTS, *key)
        events = [(r["type"], r["version"], r["to_status"], r["actor_id"], r["occurred_at"],
                   r["data"], r["enterprise_id"], r["run_id"], r["pipeline_id"]) for r in rows]
        versions = [e[1] for e in events]
        if versions != list(range(versions[0], versions[0] + len(versions))):
            result.version_drifts.append(key)
        folds[key][1] = lifecycle.fold_rows(events)


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


@dataclass(frozen=True)
class _Table:
    """A projection of counts (live runs per key) that replay compares with the runs: each
    run adds 1 under each of its keys, given as cells in groups (few groups, e.g. one per
    pipeline; a cell, a small tuple, hashes cheaply and travels by marshal: _Tally)."""

    name: str
    groups: Callable  # (pipeline_id, created_at, started_at, ended_at, status) -> the
    #                   run's ((group, [cell, ...]), ...); a cell: a tuple of ints and strs
    stored: Callable  # async (conn) -> {(enterprise_id, group): {cell: n}}, no zeros
    key: Callable  # (enterprise_id, group, cell) -> the row's key, as reported and repaired
    apply_deltas: Callable | None = None  # async (conn, {key: n}): an insights table's repair


def _status_groups(pipeline_id, created_at, started_at, ended_at, status) -> tuple:
    return ((pipeline_id, ((status,),)),)


def _insights_key(enterprise_id: str, pipeline_id, cell: tuple) -> tuple:
    return (enterprise_id, insight_keys.hour_at(cell[0]), pipeline_id, cell[1], cell[2])


# run_counts first (CounterDrift, counts.apply_deltas), then the insights tables.
TABLES: tuple[_Table, ...] = (
    _Table("run_counts", _status_groups, counts.all_cells,
           lambda enterprise_id, pipeline_id, cell: (enterprise_id, pipeline_id, cell[0])),
    _Table("run_insights", insight_keys.run_groups, insights_store.all_cells, _insights_key,
           insights_store.apply_deltas),
)


_GROUPS = tuple(table.groups for table in TABLES)
_INSIGHTS = [table.name for table in TABLES].index("run_insights")  # its totals: TotalDrift
_ROLLUP = insight_keys.ALL_PIPELINES
try:  # C: each item's count added to a dict (what Counter.update does with an iterable)
    from collections import _count_elements
except ImportError:  # pragma: no cover - another Python
    def _count_elements(into: dict, items) -> None:
        for item in items:
            into[item] = into.get(item, 0) + 1


class _Tally:
    """Runs counted under each table's keys: per table (TABLES order)
    {(enterprise_id, group): {cell: n}}."""

    __slots__ = ("tables",)

    def __init__(self):
        self.tables: list[dict] = [{} for _ in TABLES]

    # From a part's process: millions of cells, by marshal (a third of pickle's time).
    def __getstate__(self) -> list:
        return [(list(counted), marshal.dumps(list(counted.values())))
                for counted in self.tables]

    def __setstate__(self, state: list) -> None:
        self.tables = [dict(zip(groups, marshal.loads(cells))) for groups, cells in state]

    def add(self, enterprise_id: str, pipeline_id, status: str, created_at, started_at,
            ended_at) -> None:
        for counted, groups in zip(self.tables, _GROUPS):
            for group, cells in groups(pipeline_id, created_at, started_at, ended_at, status):
                key = (enterprise_id, group)
                into = counted.get(key)
                if into is None:
                    into = counted[key] = {}
                _count_elements(into, cells)

    def add_run(self, enterprise_id: str, run: dict) -> None:
        self.add(enterprise_id, run["pipeline_id"], run["status"], run["created_at"],
                 run["started_at"], run["ended_at"])

    def add_row(self, record) -> None:
        """A PROJECTION_ROWS record's run."""
        self.add(record[0], record[_P_PIPELINE], *_P_STAMPS(record))

    def merge(self, other: _Tally) -> None:
        for counted, theirs in zip(self.tables, other.tables):
            for group, cells in theirs.items():
                into = counted.get(group)
                if into is None:
                    counted[group] = cells
                    continue
                for cell, n in cells.items():
                    into[cell] = into.get(cell, 0) + n


class _Counts:
    """What the runs count under each table's keys: those whose projection row is their fold
    (nearly all) once for both sides; the rest apart, as folded and as projected."""

    def __init__(self):
        self.both = _Tally()
        self.expected = _Tally()  # the fold of runs whose row differs, or have none
        self.projected = _Tally()  # rows that differ from their fold, or have no events

    def folded(self, n: int) -> dict:
        """What the fold counts under table n's keys (TABLES order): {(enterprise_id,
        group): {cell: n}}, the runs whose row is their fold and the others' folds together
        (for a projection derived from the fold's keys, e.g. totals over them)."""
        both, extra = self.both.tables[n], self.expected.tables[n]
        if not extra:
            return both
        folded = dict(both)
        for group, cells in extra.items():
            into = folded[group] = dict(both.get(group, {}))
            for cell, count in cells.items():
                into[cell] = into.get(cell, 0) + count
        return folded

    def merge(self, other: _Counts) -> None:
        self.both.merge(other.both)
        self.expected.merge(other.expected)
        self.projected.merge(other.projected)


def _compare_rows(batch: list, folds: dict, result: Scan, counted: _Counts) -> None:
    """Each projection row (of sql.PROJECTION_ROWS) against its run's fold, which it takes
    out of folds (every run of the part with events has one)."""
    take = folds.pop
    for record in batch:
        key = (record[0], record[1])
        entry = take(key, None)
        if entry is None:  # the run has no events: its row is not explained by them
            result.orphans.append(_compare(key, None, _projection_of(record)))
            counted.projected.add_row(record)
            continue
        run = entry[1]
        if _unchanged(run, record):
            counted.both.add_row(record)
            continue
        drift = _compare(key, _expected(run), _projection_of(record))
        if drift is not None:
            result.drifts.append(drift)
        if run is not None:
            counted.expected.add_run(key[0], run)
        counted.projected.add_row(record)


def _without_rows(folds: dict, result: Scan, counted: _Counts) -> None:
    """The runs whose events fold to a live run that has no projection row."""
    for key, (_, run) in folds.items():
        if run is not None:
            result.drifts.append(_compare(key, _expected(run), None))
            counted.expected.add_run(key[0], run)


async def scan(conn: asyncpg.Connection, dsn: str | None = None,
               memory_mb: int = scan_parts.DEFAULT_MEMORY_MB) -> Scan:
    """Fold every run in one snapshot and compare with its projection row.

    With the database's dsn, a large scan is split: other processes fold a share of the
    runs each, in the same snapshot; and so is a scan whose folds would take more than
    memory_mb at once (scan_parts.py). The counter tables and the rest are read meanwhile
    on a connection of their own, in the snapshot too.
    """
    result, counted = Scan(), _Counts()
    # The parts' counts are merged and compared after the folds: millions of small tuples,
    # which the collector would walk again and again.
    with _no_cycle_collection():
        await _scan(conn, dsn, memory_mb, result, counted)
    return result


async def _scan(conn: asyncpg.Connection, dsn: str | None, memory_mb: int, result: Scan,
                counted: _Counts) -> None:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(sql.SCAN_SETTINGS)
        plan = await scan_parts.plan(conn, dsn, memory_mb)
        result.parts, result.ranges = plan.processes, len(plan.ranges)
        mine, theirs = plan.shares()
        async with contextlib.AsyncExitStack() as stack:
            if dsn is None:
                stored = None
            else:
                snapshot = await conn.fetchval(sql.EXPORT_SNAPSHOT)
                stored = await stack.enter_async_context(
                    scan_parts.beside(dsn, snapshot, _stored))
                others = await stack.enter_async_context(scan_parts.in_other_processes(
                    scan_part_alone, dsn, snapshot, theirs))
            for bounds in mine:
                await _scan_part(conn, bounds, result, counted)
            for other in (others if dsn is not None else ()):
                _merge(result, counted, *await other)
            await _scan_rest(conn, result, counted,
                             await (stored if stored is not None else _stored(conn)))


async def _scan_part(conn: asyncpg.Connection, bounds: tuple, result: Scan,
                     counted: _Counts) -> None:
    """The runs with ids in bounds: folded and compared, in the caller's transaction."""
    folds: dict = {}
    early: dict = {}
    irregular: set = set()
    events = sql.EVENTS_IN_LOG_ORDER
    with _no_cycle_collection():  # the whole part: the folds are held until compared
        async with aclosing(_batches(conn, events, sql.PREFETCH, *bounds)) as batches:
            async for batch in batches:
                _fold_events(batch, folds, early, irregular)
                result.events += len(batch)
        await _compare_part(conn, bounds, folds, early, irregular, result, counted)


async def _compare_part(conn: asyncpg.Connection, bounds: tuple, folds: dict, early: dict,
                        irregular: set, result: Scan, counted: _Counts) -> None:
    """The part's folds completed (the irregular runs refolded) and compared with its
    projection rows."""
    # Still waiting: a version missing or the first not 1 (the fold of those is the fold of
    # the events sorted by version, as it always was).
    await _refold_irregular(conn, folds, irregular | early.keys(), result)
    result.runs += len(folds)
    result.heads.update(dict.fromkeys({key[0] for key in folds}, 0))  # filled in _scan_rest
    rows = sql.PROJECTION_ROWS
    async with aclosing(_batches(conn, rows, sql.PREFETCH, *bounds)) as batches:
        async for batch in batches:
            _compare_rows(batch, folds, result, counted)
    _without_rows(folds, result, counted)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector off while the folds pile up: each of its full passes
    walks every fold held (hundreds of thousands of dicts), a third of the scan's CPU
    measured; the folds and rows make no reference cycles, so nothing is left uncollected."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def scan_part_alone(dsn: str, snapshot: str, ranges: list[tuple]) -> tuple[Scan, _Counts]:
    """_scan_part of each of the ranges in a process of its own, in the exported snapshot."""
    return asyncio.run(_scan_part_alone(dsn, snapshot, ranges))


async def _scan_part_alone(dsn: str, snapshot: str,
                           ranges: list[tuple]) -> tuple[Scan, _Counts]:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        result, counted = Scan(), _Counts()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(sql.set_snapshot(snapshot))  # first, as PostgreSQL requires
            await conn.execute(sql.SCAN_SETTINGS)
            for bounds in ranges:
                await _scan_part(conn, bounds, result, counted)
        return result, counted
    finally:
        await conn.close()


def _merge(result: Scan, counted: _Counts, part: Scan, part_counted: _Counts) -> None:
    result.events += part.events
    result.runs += part.runs
    result.heads.update(part.heads)
    result.drifts += part.drifts
    result.orphans += part.orphans
    result.version_drifts += part.version_drifts
    counted.merge(part_counted)


@dataclass
class _Stored:
    """What the scan compares whole, read in its snapshot: each counter table's cells
    (TABLES order), the recoveries that differ, stage runs without their run, and the
    insights' running totals with the recoveries per period they count."""
    tables: list[dict]
    recoveries: list
    orphan_stage_runs: list
    totals: list
    recoveries_by_period: list
    closed: dict  # {enterprise_id: watermark}


async def _stored(conn: asyncpg.Connection) -> _Stored:
    return _Stored([await table.stored(conn) for table in TABLES],
                   await insights_store.recovery_drifts(conn),
                   await conn.fetch(sql.ORPHAN_STAGE_RUN_KEYS),
                   await insights_store.all_totals(conn),
                   await insights_store.recoveries_by_period(conn),
                   await insights_store.all_closed(conn))


async def _scan_rest(conn: asyncpg.Connection, result: Scan, counted: _Counts,
                     stored: _Stored) -> None:
    """Heads, then the counter tables, recoveries, stage runs without their run."""
    result.heads = dict(sorted(
        (r[0], r[1]) for r in await conn.fetch(sql.HEADS, list(result.heads))))
    result.drifts += result.orphans
    result.orphans = []
    for n, table in enumerate(TABLES):
        _compare_table(n, table, stored.tables[n], result, counted)
    result.recovery_drifts = _recovery_drifts(stored.recoveries)
    result.total_drifts = _total_drifts(counted.folded(_INSIGHTS), stored.totals,
                                        stored.recoveries_by_period, stored.closed)
    result.closed_drifts = _closed_drifts(stored.closed, stored.totals,
                                          counted.folded(_INSIGHTS))
    known = {d.run_key for d in result.drifts}
    for row in stored.orphan_stage_runs:
        key = (row["enterprise_id"], row["run_id"])
        if key not in known:
            result.drifts.append(Drift(key, ["<stage runs without their run>"], None, None))


def _compare_table(n: int, table: _Table, stored: dict, result: Scan,
                   counted: _Counts) -> None:
    """A counter table against the fold's keys (drifts) and the projection's (errors)."""
    drifts, errors = _differences(stored, counted.both.tables[n], counted.expected.tables[n],
                                  counted.projected.tables[n])
    # Only what differs is put in order (the report's), not every key of the table.
    drifts = sorted(((table.key(*group, cell), want, have) for group, cell, want, have
                     in drifts), key=lambda d: str(d[0]))
    errors = dict(sorted(((table.key(*group, cell), delta) for group, cell, delta in errors),
                         key=lambda item: str(item[0])))
    if table.apply_deltas is None:  # run_counts
        result.counter_drifts += [CounterDrift(*d) for d in drifts]
        result.counter_errors.update(errors)
    else:
        result.insight_drifts += [InsightDrift(*d, table=table.name) for d in drifts]
        result.insight_errors[table.name] = Counter(errors)


def _total_drifts(folded: dict, stored: list, recoveries: list,
                  closed: dict) -> list[TotalDrift]:
    """run_insights_totals (stored) against the running totals of the fold's run_insights
    keys (folded: {(enterprise_id, pipeline_id): {(hour number, metric, bin): n}}) and of
    run_recoveries (per pipeline and period), per pipeline and period, and per enterprise
    (the rollup: every pipeline's), for the closed hours (before each enterprise's
    watermark, `closed`; the recoveries come counted so): a row of a period at or after it
    is surplus."""
    own: dict[tuple, dict] = defaultdict(lambda: defaultdict(Counter))
    for (enterprise_id, pipeline_id), cells in folded.items():
        mine, rollup = own[(enterprise_id, pipeline_id)], own[(enterprise_id, _ROLLUP)]
        through = closed.get(enterprise_id)
        # the first hour number not closed (hours before `through`: numbers below it)
        limit = -((insight_keys.hour_at(0) - through) // timedelta(hours=1)) \
            if through is not None else None
        for (hour, metric, bin_), n in cells.items():
            if limit is None or hour >= limit:
                continue  # not closed: not in the running totals
            at = insight_keys.period_of(hour)
            mine[at][(metric, bin_)] += n
            rollup[at][(metric, bin_)] += n
    for r in recoveries:
        period = own[(r["enterprise_id"], r["pipeline_id"])][r["at"]]
        period[("recovered", 0)] += r["n"]
        period[("recovered_micros", 0)] += r["micros"]
    have_all: dict[tuple, dict] = defaultdict(dict)
    for r in stored:
        have_all[(r["enterprise_id"], r["pipeline_id"])][r["at"]] = (
            *(r[c] for c in insight_keys.TOTAL_COLUMNS[:-2]),
            *(insight_keys.histogram_of(r[m]) for m in insight_keys.HISTOGRAMS))
    drifts = []
    for pipeline in own.keys() | have_all.keys():
        want = {row[0]: row[1:] for row in insight_keys.total_rows(own.get(pipeline, {}))}
        have = have_all.get(pipeline, {})
        for at in want.keys() | have.keys():
            w, h = want.get(at), have.get(at)
            if w != h:
                fields = [c for i, c in enumerate(insight_keys.TOTAL_COLUMNS)
                          if w is None or h is None or w[i] != h[i]]
                drifts.append(TotalDrift((*pipeline, at), fields, w, h))
    return sorted(drifts, key=lambda d: str(d.key))


def _closed_drifts(closed: dict, totals: list, folded: dict) -> list[ClosedDrift]:
    """Watermarks that are not an hour start, with the enterprise's pipelines to rebuild.
    (One ahead of now is no drift: every change before it keeps the totals, as a change
    reaching back does; one that disagrees with the rows shows as their drift: rows at or
    after it surplus, rows of a period before it missing.)"""
    drifts = []
    for enterprise_id, through in sorted(closed.items()):
        why = "not an hour start" if insight_keys.hour_start(through) != through else None
        if why:
            pipelines = ({r["pipeline_id"] for r in totals
                          if r["enterprise_id"] == enterprise_id}
                         | {p for e, p in folded if e == enterprise_id} | {_ROLLUP})
            drifts.append(ClosedDrift(enterprise_id, through, why, pipelines))
    return drifts




def _differences(stored: dict, both: dict, expected: dict, projected: dict) -> tuple[list, list]:
    """Where a table (stored) differs from the fold's counts (both + expected): (group, cell,
    expected, stored); and from the projection rows' (both + projected): (group, cell,
    stored - projected). Each argument {group: {cell: n}} without zeros."""
    drifts, errors = [], []
    for group in stored.keys() | both.keys() | expected.keys() | projected.keys():
        have, common = stored.get(group, {}), both.get(group, {})
        folded, rows = expected.get(group, {}), projected.get(group, {})
        if not folded and not rows and have == common:  # nearly every group: a dict compare
            continue
        for cell in have.keys() | common.keys() | folded.keys() | rows.keys():
            n, c = have.get(cell, 0), common.get(cell, 0)
            want = c + folded.get(cell, 0)
            if n != want:
                drifts.append((group, cell, want, n))
            delta = n - c - rows.get(cell, 0)
            if delta:
                errors.append((group, cell, delta))
    return drifts, errors


def _recovery_drifts(rows: list) -> list[RecoveryDrift]:
    drifts: dict[tuple, RecoveryDrift] = {}
    for r in rows:
        key = (r["enterprise_id"], r["pipeline_id"], r["run_id"])
        drift = drifts.setdefault(key, RecoveryDrift(key, None, None))
        if r["expected_at"] is not None:
            drift.expected = (r["expected_at"], r["expected_failed_at"])
        if r["actual_at"] is not None:
            drift.actual = (r["actual_at"], r["actual_failed_at"])
    return list(drifts.values())


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
    insights_repaired: int = 0  # run_insights rows
    recoveries_repaired: int = 0  # run_recoveries rows (their pipelines recomputed)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


async def replay(conn: asyncpg.Connection, dsn: str | None = None,
                 memory_mb: int = scan_parts.DEFAULT_MEMORY_MB) -> ReplayReport:
    """Rebuild the projection from the events; returns what was processed and repaired.
    dsn: the database's, to split a large scan across processes (scan())."""
    if not await conn.fetchval(sql.TRY_REPLAY_LOCK):
        raise RuntimeError("another replay is running")
    try:
        return await _replay(conn, dsn, memory_mb)
    finally:
        await conn.fetchval(sql.UNLOCK_REPLAY)


async def _replay(conn: asyncpg.Connection, dsn: str | None, memory_mb: int) -> ReplayReport:
    started = time.perf_counter()
    result = await scan(conn, dsn, memory_mb)
    items = [(d.run_key, d.expected, (d.actual or {}).get("version")) for d in result.drifts]
    skipped: list[tuple] = []
    for i in range(0, len(items), BATCH):
        async with conn.transaction():
            skipped += await sql.patch_runs(conn, items[i:i + BATCH], guarded=True)
    caught_up = await _catch_up(conn, result.heads, {item[0] for item in skipped},
                                result.counter_errors, result.insight_errors,
                                {d.key[:2] for d in result.recovery_drifts},
                                _totals_to_rebuild(result),
                                [d.enterprise_id for d in result.closed_drifts])
    return ReplayReport(result.events, result.runs, len(result.drifts), caught_up,
                        time.perf_counter() - started,
                        counters_repaired=len(result.counter_errors),
                        insights_repaired=sum(map(len, result.insight_errors.values())),
                        recoveries_repaired=len(result.recovery_drifts),
                        version_drifts=len(result.version_drifts))


def _totals_to_rebuild(result: Scan) -> set[tuple]:
    """The (enterprise, pipeline)s whose run_insights_totals replay rebuilds: those that
    drifted, or whose run_insights rows or recoveries are repaired other than by the
    triggers; and their enterprises' rollups."""
    pipelines = ({d.key[:2] for d in result.total_drifts}
                 | {(k[0], k[2]) for errors in result.insight_errors.values() for k in errors}
                 | {d.key[:2] for d in result.recovery_drifts}
                 | {(d.enterprise_id, p) for d in result.closed_drifts for p in d.pipelines})
    return pipelines | {(e, insight_keys.ALL_PIPELINES) for e, _ in pipelines}


async def _catch_up(conn: asyncpg.Connection, heads: dict[str, int], keys: set,
                    counter_errors: Counter, insight_errors: dict[str, Counter],
                    recovered: set[tuple], totals: set[tuple],
                    watermarks: list[str]) -> int:
    """Under a short write lock: re-fold the runs changed since the scan, and the skipped;
    take the counters' snapshot error back out (patches and writes never change it)."""
    async with conn.transaction():
        await conn.execute(sql.CATCH_UP_SETTINGS)
        await counts.apply_deltas(conn, Counter({k: -v for k, v in counter_errors.items()}))
        for table in TABLES:
            if table.apply_deltas is not None:
                errors = insight_errors.get(table.name, {})
                await table.apply_deltas(conn, {k: -v for k, v in errors.items()})
        await conn.execute(sql.LOCK_WRITES)
        changed = await conn.fetch(sql.RUNS_CHANGED_SINCE, list(heads), list(heads.values()))
        keys = keys | {(r["enterprise_id"], r["run_id"]) for r in changed}
        items = []
        for enterprise_id, run_id in keys:
            expected = await _refold(conn, enterprise_id, run_id)
            if expected != await _actual(conn, enterprise_id, run_id):
                items.append(((enterprise_id, run_id), expected, None))
        await sql.patch_runs(conn, items, guarded=False)
        # Recoveries follow the runs projection (its patches move them at commit); the
        # pipelines whose recoveries drifted otherwise are recomputed whole.
        await insights_store.refresh_recoveries(conn, recovered)
        await insights_store.fix_watermarks(conn, watermarks)  # then the totals up to them
        await insights_store.rebuild_totals(conn, totals)
        return len(keys)


async def verify(conn: asyncpg.Connection, dsn: str | None = None,
                 memory_mb: int = scan_parts.DEFAULT_MEMORY_MB) -> Scan:
    """Recompute every run from its events and list where the projection differs."""
    return await scan(conn, dsn, memory_mb)
