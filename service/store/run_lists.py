"""Listing runs at scale: one index range per segment, a keyset cursor, counts from counters.

A page of any ordering x filter is read as a merge of *segments*: one segment per status
(or just the filtered one), per pipeline where the list is about pipelines (the pipeline
list, a pipeline_name filter, the pipeline__name ordering), and, for the NULLS LAST
orderings, a non-NULL and a NULL part. Each segment is one ordered range of an index of
schema.sql (`LIMIT offset + limit + 1` rows, read by a LATERAL subquery), and the page is
the first rows of their union in the full ordering. So the first page costs a few index
descents and at most (segments x page) rows whatever the size of the enterprise, and no
ordering needs an index of its own: `status` is the statuses read in lifecycle order, NULLS
LAST is the non-NULL part then the NULL part.

`count` comes from run_counts (store/counts.py) in the same statement, so it agrees with the
page, and so does the Consistency-Token's position (store/replication.py POSITION_COLUMN):
a page is one round trip. A created_/updated_ range cannot be answered by counters: then
its runs are counted first, up to COUNT_CAP (`count_exact` says whether the count was
capped), from a date index range. That count also picks how the page is read: a range of
at most RANGE_CAP runs is read whole from its date index and sorted (cost: the range,
whatever the ordering); a wider one as above, its segments filtered by the dates (cost:
rows skipped until the page fills, few when the range is wide; see docs/performance.md for
the orderings where it is not).

The cursor is the last row's sort key and id, base64url JSON; the next page is the rows
strictly after it in the ordering, read per segment with a row comparison on the index
columns. It stays exact while runs change: a row is never seen twice, and rows that do not
move past the cursor are never skipped. A previous cursor (the first row's key, marked
"d": "b") reads the same segments the other way: the rows strictly before it, in the
reversed ordering (each index range scanned backward), turned round for the answer.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg

from service.domain import lifecycle
from service.domain.errors import BadRequest, NotFound
from service.store import replication

COUNT_CAP = 10_000  # date-filtered lists count their runs up to this many
RANGE_CAP = 4_000  # ...and read a range of at most this many runs whole, then sort it

STATUSES = lifecycle.RUN_STATUSES
RANK = lifecycle.STATUS_RANK
INT_MAX = 2**31 - 1
UUID_MIN = uuid.UUID(int=0)
UUID_MAX = uuid.UUID(int=2**128 - 1)

COLUMNS = ("id", "enterprise_id", "run_number", "pipeline_id", "pipeline_name", "status",
           "status_meta", "created_by", "updated_by", "created_at", "updated_at",
           "started_at", "ended_at", "version")
_SELECT = """r.id, r.enterprise_id, r.run_number, r.pipeline_id, {name} AS pipeline_name,
                 r.status, r.status_meta, r.created_by, r.updated_by, r.created_at,
                 r.updated_at, r.started_at, r.ended_at, r.version"""
_LIVE_PIPELINE = """JOIN pipelines p ON p.enterprise_id = r.enterprise_id
                                     AND p.id = r.pipeline_id AND p.deleted_at IS NULL"""
# Runs of soft-deleted pipelines are not listed. Segments not tied to given (live)
# pipelines skip them by id (few, evaluated once per statement) instead of joining every
# row they read; the page's own rows get their pipeline's name at the end.
_NOT_GONE = """r.pipeline_id <> ALL(ARRAY(
              SELECT g.id FROM pipelines g
              WHERE g.enterprise_id = {ent} AND g.deleted_at IS NOT NULL))"""


@dataclass(frozen=True)
class Order:
    """One ordering: its cursor key, and how a segment reads it."""

    key: tuple[str, ...]  # cursor fields: the sort key, id last
    types: tuple[type, ...]  # their JSON types (datetime: an ISO string, nullable where noted)
    final: str  # ORDER BY over the merged segments (columns of the page)
    descending: bool


def _order(key, types, final, descending=False) -> Order:
    return Order(tuple(key), tuple(types), final, descending)


ORDERS: dict[str | None, Order] = {
    None: _order(("created_at", "id"), (datetime, uuid.UUID),
                 "created_at DESC, id DESC", True),
    "status": _order(("status", "created_at", "id"), (str, datetime, uuid.UUID),
                     "seg_rank ASC, created_at DESC, id DESC"),
    "-status": _order(("status", "created_at", "id"), (str, datetime, uuid.UUID),
                      "seg_rank DESC, created_at DESC, id DESC", True),
    "run_number": _order(("run_number", "created_at", "id"), (int, datetime, uuid.UUID),
                         "run_number ASC, created_at ASC, id ASC"),
    "-run_number": _order(("run_number", "created_at", "id"), (int, datetime, uuid.UUID),
                          "run_number DESC, created_at DESC, id DESC", True),
    "pipeline__name": _order(("pipeline_name", "run_number", "id"), (str, int, uuid.UUID),
                             "pipeline_name ASC, run_number ASC, id ASC"),
    "-pipeline__name": _order(("pipeline_name", "run_number", "id"), (str, int, uuid.UUID),
                              "pipeline_name DESC, run_number DESC, id DESC", True),
    "started_at": _order(("started_at", "id"), (datetime, uuid.UUID),
                         "started_at ASC NULLS LAST, id ASC"),
    "-started_at": _order(("started_at", "id"), (datetime, uuid.UUID),
                          "started_at DESC NULLS LAST, id DESC", True),
    "ended_at": _order(("ended_at", "id"), (datetime, uuid.UUID),
                       "ended_at ASC NULLS LAST, id ASC"),
    "-ended_at": _order(("ended_at", "id"), (datetime, uuid.UUID),
                        "ended_at DESC NULLS LAST, id DESC", True),
}
_NULLABLE = {"started_at", "ended_at"}
_TYPES = {"created_at": "timestamptz", "started_at": "timestamptz", "ended_at": "timestamptz",
          "run_number": "int", "id": "uuid"}


# --- the cursor ------------------------------------------------------------------------

def encode_cursor(ordering: str | None, row: dict[str, Any], backward: bool = False) -> str:
    """The cursor after `row` (backward: before it) in the ordering."""
    keys = []
    for name in ORDERS[ordering].key:
        value = row[name]
        keys.append(value.isoformat() if isinstance(value, datetime)
                    else str(value) if isinstance(value, uuid.UUID) else value)
    data = {"o": ordering or "", "k": keys, **({"d": "b"} if backward else {})}
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _bad_cursor(why: str) -> BadRequest:
    return BadRequest("invalid input", content={"errors": {"cursor": [why]}})


def decode_cursor(text: str, ordering: str | None) -> dict[str, Any]:
    """The cursor's key values by name; a 400 envelope when it is not one of ours."""
    return decode_directed(text, ordering)[0]


def decode_directed(text: str, ordering: str | None) -> tuple[dict[str, Any], bool]:
    """The cursor's key values, and whether it reads backward (a previous cursor)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack (never one of ours).
        raise _bad_cursor("malformed cursor") from None
    if not (isinstance(data, dict) and set(data) in ({"o", "k"}, {"o", "k", "d"})
            and isinstance(data["k"], list) and isinstance(data["o"], str)
            and data.get("d", "b") == "b"):
        raise _bad_cursor("malformed cursor")
    if data["o"] != (ordering or ""):
        raise _bad_cursor("the cursor belongs to another ordering")
    order = ORDERS[ordering]
    if len(data["k"]) != len(order.key):
        raise _bad_cursor("malformed cursor")
    values: dict[str, Any] = {}
    for name, kind, value in zip(order.key, order.types, data["k"]):
        try:
            values[name] = _typed(name, kind, value)
        except (TypeError, ValueError, OverflowError):
            raise _bad_cursor("malformed cursor") from None
    if ordering in ("status", "-status") and values["status"] not in RANK:
        raise _bad_cursor("malformed cursor")
    return values, "d" in data


def _typed(name: str, kind: type, value: Any) -> Any:
    """One key value, checked whole: its JSON type first, then its range as a column holds it."""
    if value is None and name in _NULLABLE:
        return None
    if kind is int:
        if type(value) is not int or not 0 <= value <= INT_MAX:
            raise ValueError(name)
        return value
    if type(value) is not str or len(value) > 10_000:
        raise ValueError(name)  # uuid.UUID(5) is an AttributeError, not a ValueError
    if kind is datetime:
        instant = datetime.fromisoformat(value)
        if instant.tzinfo is None:
            raise ValueError(name)
        # In UTC (as the database stores it) or not at all: year 1 at +14:00 is year 0 in
        # UTC, which neither Python nor the driver can send (OverflowError, a 400).
        return instant.astimezone(timezone.utc)
    if kind is uuid.UUID:
        return uuid.UUID(value)
    if "\x00" in value:
        raise ValueError(name)
    return value


# --- the statement ---------------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    enterprise_id: str
    pipeline_id: uuid.UUID | None = None  # the pipeline list
    pipeline_name: str | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    @property
    def dated(self) -> bool:
        return any(v is not None for v in (self.created_after, self.created_before,
                                           self.updated_after, self.updated_before))


class _Params:
    """Placeholders by value; numbered at the end, so only the used ones are sent."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"@{len(self.values) - 1}@::{cast}"

    def finish(self, sql: str) -> tuple[str, list[Any]]:
        numbered = _NUMBERED.get(sql)
        if numbered is None:
            if len(_NUMBERED) >= _NUMBERED_MAX:
                _NUMBERED.clear()
            numbered = _NUMBERED[sql] = _number(sql)
        text, used = numbered
        return text, [self.values[i] for i in used]


# A statement's text with its placeholders numbered, by its text with them by value: one
# shape of list gives one text, so the regular expression runs once per shape, not per page.
_NUMBERED: dict[str, tuple[str, tuple[int, ...]]] = {}
_NUMBERED_MAX = 1024


def _number(sql: str) -> tuple[str, tuple[int, ...]]:
    numbers: dict[int, int] = {}

    def number(match: re.Match) -> str:
        i = int(match.group(1))
        if i not in numbers:
            numbers[i] = len(numbers) + 1
        return f"${numbers[i]}"

    text = re.sub(r"@(\d+)@", number, sql)
    return text, tuple(sorted(numbers, key=numbers.get))


def _date_conditions(f: Filters, arg: _Params) -> str:
    parts = []
    for column, after, before in (("created_at", f.created_after, f.created_before),
                                  ("updated_at", f.updated_after, f.updated_before)):
        if after is not None:  # after: inclusive, before: exclusive (half-open ranges)
            parts.append(f"r.{column} >= {arg(after, 'timestamptz')}")
        if before is not None:
            parts.append(f"r.{column} < {arg(before, 'timestamptz')}")
    return "".join(f"\n          AND {p}" for p in parts)


def _pipelines(f: Filters, arg: _Params, ent: str) -> str | None:
    """The pipeline segments' source when the list is about given pipelines."""
    if f.pipeline_id is not None:
        cond = f"p.id = {arg(f.pipeline_id, 'uuid')}"
    elif f.pipeline_name is not None:
        cond = f"p.name = {arg(f.pipeline_name, 'text')}"
    else:
        return None
    return f"""SELECT p.id, p.name FROM pipelines p
             WHERE p.enterprise_id = {ent} AND p.deleted_at IS NULL AND {cond}"""


def _flip(final: str) -> str:
    """An ORDER BY read the other way (NULLS LAST becomes NULLS FIRST)."""
    swap = {"ASC": "DESC", "DESC": "ASC", "LAST": "FIRST", "FIRST": "LAST"}
    return ", ".join(" ".join(swap.get(word, word) for word in part.split())
                     for part in final.split(", "))


def _status_segments(ordering: str | None, status: str | None, cursor: dict | None,
                     backward: bool = False) -> list[tuple[str, int, bool]]:
    """(status, rank, bounded by the cursor) of each status segment, cursor-excluded ones out."""
    statuses = [status] if status is not None else list(STATUSES)
    rising = (ordering == "status") != backward  # ranks in the direction of the read
    out = []
    for s in statuses:
        bounded = cursor is not None
        if cursor is not None and ordering in ("status", "-status"):
            c = RANK[cursor["status"]]
            if (RANK[s] < c) if rising else (RANK[s] > c):
                continue  # wholly before the cursor
            bounded = RANK[s] == c
        out.append((s, RANK[s], bounded))
    return out


def build(f: Filters, ordering: str | None, limit: int, offset: int,
          cursor: dict | None, known_count: int | None = None,
          backward: bool = False) -> tuple[str, list[Any]]:
    """The one statement of a page: its rows (limit + 1 of them) and the count.

    backward: the rows before the cursor, in the reversed ordering (a previous page).
    """
    arg = _Params()
    ent = arg(f.enterprise_id, "text")
    need = arg(offset + limit + 1, "bigint")
    order = ORDERS[ordering]
    final = _flip(order.final) if backward else order.final
    dates = _date_conditions(f, arg)
    status = arg(f.status, "text") if f.status is not None else None
    ctes: list[str] = []
    if ordering in ("pipeline__name", "-pipeline__name"):
        segments = _by_pipeline_name(f, order, cursor, arg, ent, need, status, dates, ctes,
                                     backward)
    else:
        segments = _by_status(f, ordering, order, cursor, arg, ent, need,
                              _pipelines(f, arg, ent), dates, ctes, backward)
    total = (_count(f, arg, ent, status, dates) if known_count is None
             else arg(known_count, "bigint"))
    exists = _pipeline_live(f, arg, ent)
    columns = ", ".join(f"page.{c}" for c in COLUMNS if c != "pipeline_name")
    sql = f"""
WITH {''.join(c + ', ' for c in ctes)}page AS (
    SELECT u.* FROM ({segments}) AS u
    ORDER BY {final}
    LIMIT {arg(limit + 1, 'bigint')} OFFSET {arg(offset, 'bigint')}
), total AS (
    SELECT ({total}) AS total_count, {exists} AS pipeline_live, {replication.POSITION_COLUMN}
)
SELECT total.total_count, total.pipeline_live, total.wal_position, {columns},
       coalesce(page.pipeline_name, (
           SELECT n.name FROM pipelines n
           WHERE n.enterprise_id = page.enterprise_id AND n.id = page.pipeline_id))
       AS pipeline_name
FROM total LEFT JOIN page ON true
ORDER BY {', '.join('page.' + part for part in final.split(', '))}"""
    return arg.finish(sql)


def _pipeline_live(f: Filters, arg: "_Params", ent: str) -> str:
    """Whether a pipeline's list still has its pipeline (deleted: the list is a 404)."""
    if f.pipeline_id is None:
        return "true"
    return (f"EXISTS (SELECT 1 FROM pipelines WHERE enterprise_id = {ent} "
            f"AND id = {arg(f.pipeline_id, 'uuid')} AND deleted_at IS NULL)")


def build_range(f: Filters, ordering: str | None, limit: int, offset: int,
                cursor: dict | None, count: int, backward: bool = False) -> tuple[str, list[Any]]:
    """A page of a narrow date range (at most RANGE_CAP runs): the range, then the sort.

    The range is materialized first, so it is read from a date index whatever the
    ordering; the page is the first rows of it in the ordering, after the cursor.
    """
    arg = _Params()
    ent = arg(f.enterprise_id, "text")
    order = ORDERS[ordering]
    final = _flip(order.final) if backward else order.final
    ranked = arg(sorted(STATUSES, key=RANK.get), "text[]")
    conds = [f"r.enterprise_id = {ent}"]
    if f.status is not None:
        conds.append(f"r.status = {arg(f.status, 'text')}")
    else:  # every status named, so the (enterprise, status, created_at) index range-scans
        conds.append(f"r.status = ANY({arg(list(STATUSES), 'text[]')})")
    if f.pipeline_id is not None:
        conds.append(f"r.pipeline_id = {arg(f.pipeline_id, 'uuid')}")
    if f.pipeline_name is not None:
        conds.append(f"p.name = {arg(f.pipeline_name, 'text')}")
    if cursor is not None:
        conds.append(_after(ordering, order, cursor, arg, ranked, backward))
    exists = _pipeline_live(f, arg, ent)
    columns = ", ".join(f"page.{c}" for c in COLUMNS)
    sql = f"""
WITH range AS MATERIALIZED (
    SELECT {_SELECT.format(name='p.name')},
           array_position({ranked}, r.status) AS seg_rank
    FROM pipeline_runs r {_LIVE_PIPELINE}
    WHERE {' AND '.join(conds)}{_date_conditions(f, arg)}
), page AS (
    SELECT * FROM range
    ORDER BY {final}
    LIMIT {arg(limit + 1, 'bigint')} OFFSET {arg(offset, 'bigint')}
)
SELECT {arg(count, 'bigint')} AS total_count, {exists} AS pipeline_live, one.wal_position,
       {columns}
FROM (SELECT {replication.POSITION_COLUMN}) AS one LEFT JOIN page ON true
ORDER BY {', '.join('page.' + part for part in final.split(', '))}"""
    return arg.finish(sql)


def _after(ordering: str | None, order: Order, cursor: dict, arg: _Params,
           ranked: str, backward: bool = False) -> str:
    """Rows strictly after the cursor in the ordering (backward: before it), as one
    condition on a run row."""
    def key(*names: str) -> str:
        return ", ".join(arg(cursor[n], _TYPES.get(n, "text")) for n in names)

    cmp = "<" if order.descending != backward else ">"
    if ordering in ("status", "-status"):
        rank = f"array_position({ranked}, r.status)"
        at = f"array_position({ranked}, {arg(cursor['status'], 'text')})"
        newer = ">" if backward else "<"  # created_at DESC within a status
        return (f"({rank} {cmp} {at} OR ({rank} = {at} AND "
                f"(r.created_at, r.id) {newer} ({key('created_at', 'id')})))")
    if ordering in ("pipeline__name", "-pipeline__name"):
        return f"(p.name, r.run_number, r.id) {cmp} ({key('pipeline_name', 'run_number', 'id')})"
    names = order.key
    col = names[0]
    if col in _NULLABLE:  # NULLS LAST both ways: the NULL part comes after every value
        if backward and cursor[col] is None:
            return f"(r.{col} IS NOT NULL OR r.id {cmp} {key('id')})"
        if backward:
            return f"(r.{col} IS NOT NULL AND (r.{col}, r.id) {cmp} ({key(col, 'id')}))"
        if cursor[col] is None:
            return f"(r.{col} IS NULL AND r.id {cmp} {key('id')})"
        return f"(r.{col} IS NULL OR (r.{col}, r.id) {cmp} ({key(col, 'id')}))"
    return f"({', '.join('r.' + n for n in names)}) {cmp} ({key(*names)})"


def _by_status(f, ordering, order, cursor, arg, ent, need, pipelines, dates, ctes,
               backward=False) -> str:
    """Segments per status (x pipeline), one index range each (backward: read up)."""
    run_number = ordering in ("run_number", "-run_number")
    # Within one pipeline and without a status filter, run_number order is the unique
    # (enterprise_id, pipeline_id, run_number) index itself: no status segments needed.
    per_status = not (run_number and pipelines is not None and f.status is None)
    segs = (_status_segments(ordering, f.status, cursor, backward) if per_status
            else [(None, 0, True)])
    if not segs:
        return _empty_page()
    desc = order.descending != backward
    # Each segment's bound is the cursor's key where the cursor applies to it, else a value
    # beyond every row in the direction of the scan (so every bound is an index condition).
    names = [k for k in order.key if k != "status"]  # the bound's columns, id last
    col = names[0] if names[0] in _NULLABLE else None
    cursor_null = cursor is not None and col is not None and cursor[col] is None
    # created_at DESC within a status; backward, every range is read the other way
    scans_down = (order.descending or ordering in ("status", "-status")) != backward
    far = {"timestamptz": "'infinity'::timestamptz" if scans_down else "'-infinity'::timestamptz",
           "int": str(INT_MAX) if scans_down else "0",
           "uuid": f"'{UUID_MAX if scans_down else UUID_MIN}'::uuid"}
    bounds = [arg([s for s, _, _ in segs], "text[]"), arg([r for _, r, _ in segs], "int[]")]
    for n in names:
        values = [cursor[n] if bounded and cursor is not None else None for _, _, bounded in segs]
        bounds.append(arg(values, _TYPES[n] + "[]"))
    seg_cols = ", ".join(f"coalesce(b.b_{n}, {far[_TYPES[n]]}) AS b_{n}" for n in names)
    seg_source = f"unnest({', '.join(bounds)}) AS b(status, rank, " + \
        ", ".join("b_" + n for n in names) + ")"
    if pipelines is not None:
        ctes.append(f"pl AS ({pipelines})")
        ctes.append(f"seg AS (SELECT b.status, b.rank, pl.id AS pipeline_id, pl.name, "
                    f"{seg_cols} FROM {seg_source} CROSS JOIN pl)")
    else:
        ctes.append(f"seg AS (SELECT b.status, b.rank, {seg_cols} FROM {seg_source})")

    conds = [f"r.enterprise_id = {ent}"]
    if per_status:
        conds.append("r.status = seg.status")
    if pipelines is not None:
        conds.append("r.pipeline_id = seg.pipeline_id")
        name = "seg.name"
    else:
        conds.append(_NOT_GONE.format(ent=ent))
        name = "NULL::text"  # named at the end
    source = "pipeline_runs r"
    base = " AND ".join(conds) + dates
    select = _SELECT.format(name=name) + ", seg.rank AS seg_rank"

    def lateral(where: str, order_by: str) -> str:
        return f"""SELECT x.* FROM seg CROSS JOIN LATERAL (
        SELECT {select}
        FROM {source}
        WHERE {base}
          AND {where}
        ORDER BY {order_by}
        LIMIT {need}) AS x"""

    cmp = "<" if desc else ">"
    if ordering is None or ordering in ("status", "-status"):
        down, d = ("<", " DESC") if scans_down else (">", "")
        return lateral(f"(r.created_at, r.id) {down} (seg.b_created_at, seg.b_id)",
                       f"r.created_at{d}, r.id{d}")
    if run_number:
        # Within one pipeline run numbers are unique: run_number alone is the order, and it
        # is the (..., pipeline_id, [status,] run_number) indexes' own.
        d = " DESC" if desc else ""
        by = f"r.run_number{d}" if pipelines is not None else \
            f"r.run_number{d}, r.created_at{d}, r.id{d}"
        where = (f"(r.run_number, r.created_at, r.id) {cmp} "
                 f"(seg.b_run_number, seg.b_created_at, seg.b_id)")
        if pipelines is not None:  # the bound on the index's own column, spelt out
            where = f"r.run_number {cmp}= seg.b_run_number AND {where}"
        return lateral(where, by)
    # started_at / ended_at, NULLS LAST both ways: the non-NULL part, then the NULL part
    # (whose rows sort by id alone), each read from the same (..., col, id) index. The
    # segment ORDER BYs name the index's own order so the planner reads it as it lies.
    # Backward (NULLS FIRST): the NULL part only when the cursor is in it, then all values.
    d = " DESC" if desc else ""
    parts = []
    if backward or not cursor_null:
        parts.append(lateral(f"r.{col} IS NOT NULL AND (r.{col}, r.id) {cmp} "
                             f"(seg.b_{col}, seg.b_id)", f"r.{col}{d}, r.id{d}"))
    if cursor_null or not backward:
        parts.append(lateral(f"r.{col} IS NULL AND r.id {cmp} seg.b_id"
                             if cursor_null else f"r.{col} IS NULL",
                             f"r.{col}{d}, r.id{d}"))
    return "\n    UNION ALL\n    ".join(parts)


def _by_pipeline_name(f, order, cursor, arg, ent, need, status, dates, ctes,
                      backward=False) -> str:
    """Segments per pipeline in name order; counters pick the pipelines the page can reach."""
    desc = order.descending != backward
    status_cond = f" AND c.status = {status}" if status is not None else ""
    name_filter = f" AND p.name = {arg(f.pipeline_name, 'text')}" if f.pipeline_name else ""
    c_name = c_rn = c_id = None
    if cursor is not None:
        c_name, c_rn, c_id = cursor["pipeline_name"], cursor["run_number"], cursor["id"]
    cname = arg(c_name, "text")
    after_cursor = (f" AND p.name {'<=' if desc else '>='} {cname}" if cursor is not None else "")
    # The count of a name group where the cursor is counts 0: it may have fewer rows left.
    # `before`: the runs of the names before this one, as a running sum (its own name's
    # group, RANGE's peers, taken off): a frame with EXCLUDE GROUP was summed afresh for
    # every row, quadratic in the pipelines (9 ms of a page at 200 of them).
    # With a date range the counters overstate what a pipeline can give: no pruning then.
    prune = "" if f.dated else f"\n        WHERE before < {need}"
    ctes.append(f"""pc AS (
        SELECT p.id, p.name, sum(c.n) AS n
        FROM pipelines p JOIN run_counts c ON c.enterprise_id = p.enterprise_id
                                          AND c.pipeline_id = p.id{status_cond}
        WHERE p.enterprise_id = {ent} AND p.deleted_at IS NULL{name_filter}{after_cursor}
        GROUP BY p.id, p.name HAVING sum(c.n) > 0
    )""")
    far_rn, far_id = (INT_MAX, UUID_MAX) if desc else (0, UUID_MIN)
    ctes.append(f"""seg AS (
        SELECT pipeline_id, name, b_rn, b_id FROM (
            SELECT id AS pipeline_id, name,
                   CASE WHEN name = {cname} THEN {arg(c_rn, 'int')} ELSE {far_rn} END AS b_rn,
                   CASE WHEN name = {cname} THEN {arg(c_id, 'uuid')} ELSE '{far_id}'::uuid
                   END AS b_id,
                   sum(v) OVER (ORDER BY name {'DESC' if desc else 'ASC'})
                       - sum(v) OVER (PARTITION BY name) AS before
            FROM (SELECT *, CASE WHEN name = {cname} THEN 0 ELSE n END AS v FROM pc) AS pv
            ) AS counted{prune}
    )""")
    cmp, d = ("<", " DESC") if desc else (">", "")
    status_row = f" AND r.status = {status}" if status is not None else ""
    return f"""SELECT x.* FROM seg CROSS JOIN LATERAL (
        SELECT {_SELECT.format(name='seg.name')}, 0 AS seg_rank
        FROM pipeline_runs r
        WHERE r.enterprise_id = {ent} AND r.pipeline_id = seg.pipeline_id{status_row}{dates}
          AND (r.run_number, r.id) {cmp} (seg.b_rn, seg.b_id)
        ORDER BY r.run_number{d}
        LIMIT {need}) AS x"""


def _empty_page() -> str:
    return (f"SELECT {', '.join('NULL::' + t + ' AS ' + c for c, t in _EMPTY)} WHERE false")


_EMPTY = (("id", "uuid"), ("enterprise_id", "text"), ("run_number", "int"),
          ("pipeline_id", "uuid"), ("pipeline_name", "text"), ("status", "text"),
          ("status_meta", "jsonb"), ("created_by", "bigint"), ("updated_by", "bigint"),
          ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
          ("started_at", "timestamptz"), ("ended_at", "timestamptz"), ("version", "int"),
          ("seg_rank", "int"))


def _count(f: Filters, arg: _Params, ent: str, status: str | None, dates: str) -> str:
    if not f.dated:
        conds = [f"c.enterprise_id = {ent}"]
        if f.pipeline_id is not None:
            conds.append(f"c.pipeline_id = {arg(f.pipeline_id, 'uuid')}")
        if f.pipeline_name is not None:
            conds.append(f"p.name = {arg(f.pipeline_name, 'text')}")
        if status is not None:
            conds.append(f"c.status = {status}")
        return f"""SELECT coalesce(sum(c.n), 0)::bigint FROM run_counts c
        JOIN pipelines p ON p.enterprise_id = c.enterprise_id AND p.id = c.pipeline_id
                        AND p.deleted_at IS NULL
        WHERE {' AND '.join(conds)}"""
    conds = [f"r.enterprise_id = {ent}",
             # every status named, so the (enterprise, status, ...) indexes range-scan
             f"r.status = ANY({arg([f.status] if f.status else list(STATUSES), 'text[]')})"]
    live = ""
    if f.pipeline_id is not None:  # a deleted pipeline's list is a 404 anyway
        conds.append(f"r.pipeline_id = {arg(f.pipeline_id, 'uuid')}")
    elif f.pipeline_name is not None:
        live = _LIVE_PIPELINE
        conds.append(f"p.name = {arg(f.pipeline_name, 'text')}")
    else:
        conds.append(_NOT_GONE.format(ent=ent))
    return f"""SELECT count(*) FROM (
        SELECT 1 FROM pipeline_runs r {live}
        WHERE {' AND '.join(conds)}{dates}
        LIMIT {COUNT_CAP + 1}) AS capped"""


@dataclass
class Page:
    count: int
    count_exact: bool
    items: list[dict[str, Any]]
    has_more: bool  # rows after the page
    next_cursor: str | None
    previous_cursor: str | None = None  # rows before the page (read from a cursor or offset)
    backward: bool = False  # read from a previous cursor


def build_count(f: Filters) -> tuple[str, list[Any]]:
    """A date range's runs, counted up to COUNT_CAP + 1 (from a date index range)."""
    arg = _Params()
    ent = arg(f.enterprise_id, "text")
    status = arg(f.status, "text") if f.status is not None else None
    return arg.finish(_count(f, arg, ent, status, _date_conditions(f, arg)))


async def list_runs(conn: asyncpg.Connection, f: Filters, *, ordering: str | None, limit: int,
                    offset: int, cursor: str | None = None) -> Page:
    keys, backward = (decode_directed(cursor, ordering) if cursor is not None
                      else (None, False))
    if f.dated:
        # Two statements, no transaction: the count picks the plan of the page (and, taken
        # a moment before it, may miss a run created in between; it is capped anyway).
        count_sql, count_args = build_count(f)
        count = await conn.fetchval(count_sql, *count_args)
        sql, args = (build_range if count <= RANGE_CAP else build)(
            f, ordering, limit, offset, keys, count, backward=backward)
    else:
        sql, args = build(f, ordering, limit, offset, keys, backward=backward)
    rows = await conn.fetch(sql, *args)
    head = rows[0]
    # The page answered the connection's position: no round trip for the Consistency-Token.
    replication.note(conn, head["wal_position"])
    if f.pipeline_id is not None and not head["pipeline_live"]:
        raise NotFound("pipeline not found")
    items = [{c: r[c] for c in COLUMNS} for r in rows if r["id"] is not None]
    more = len(items) > limit  # more rows in the direction read
    items = items[:limit]
    if backward:
        items.reverse()
    count = head["total_count"]
    exact = not f.dated or count <= COUNT_CAP
    # A backward page has the cursor's row after it; a forward one, rows before it when it
    # did not start at the top.
    after = more or (backward and bool(items))
    before = more if backward else bool(items) and (keys is not None or offset > 0)
    return Page(min(count, COUNT_CAP) if not exact else count, exact, items, after,
                encode_cursor(ordering, items[-1]) if after else None,
                encode_cursor(ordering, items[0], backward=True) if before else None,
                backward)
