"""Insights: run figures per time bucket and pipeline, from the insights projections.

The window is widened to whole UTC hours (the projection's grain); its whole 6-hour periods
come from the running totals up to the enterprise's watermark (the closed hours), its
ragged ends and the hours from the watermark on from the hourly rows; `as_of` answers
from the events as they stood then (store/insights.py).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from service.domain import insights as figures_of
from service.domain import insights_sums
from service.domain.errors import BadRequest, NotFound
from service.store import insights as store

DEFAULT_WINDOW = timedelta(days=30)
MAX_WINDOW = timedelta(days=366)
# One answer holds at most this many rows (buckets × pipelines when grouped): a year by the
# hour for 200 pipelines would be 1.7M rows, hundreds of MB built in memory for one request.
MAX_ROWS = 10_000


def _utc(at: datetime) -> datetime:
    return at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)


def window(start: datetime | None, end: datetime | None, as_of: datetime | None,
           now: datetime) -> tuple[datetime, datetime]:
    """[from, to) widened to whole hours; default the 30 days before as_of (or now)."""
    end = _utc(end) if end else _utc(as_of or now)
    start = _utc(start) if start else end - DEFAULT_WINDOW
    if start >= end:
        raise BadRequest("`from` must be before `to`", content={"from": [start.isoformat()]})
    if end - start > MAX_WINDOW:
        raise BadRequest("the window may span at most 366 days",
                         content={"to": ["at most 366 days after `from`"]})
    start = start.replace(minute=0, second=0, microsecond=0)
    if end != end.replace(minute=0, second=0, microsecond=0):
        end = end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return start, end


async def insights(conn: asyncpg.Connection, enterprise_id: str, *, start=None, end=None,
                   granularity: str | None = None, group_by: str | None = None,
                   pipeline_ids: list | None = None, pipeline_name: str | None = None,
                   as_of: datetime | None = None, now: datetime | None = None,
                   pipeline_route: bool = False) -> dict[str, Any]:
    """The answer: the window, how percentiles are made, and one row per bucket (and pipeline).

    pipeline_route: asked of one pipeline (pipeline_ids[0]), which must exist (else 404)."""
    now = now or datetime.now(timezone.utc)
    as_of = _utc(as_of) if as_of else None
    frm, to = window(start, end, as_of, now)
    group = group_by == "pipeline"
    args = (enterprise_id, (frm, to), pipeline_ids or None, pipeline_name, granularity, group,
            as_of)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await store.custom_plans(conn)
        if pipeline_route and not await store.pipeline_is_live(conn, enterprise_id,
                                                              pipeline_ids[0]):
            raise NotFound("pipeline not found")
        names = await _within_max_rows(conn, enterprise_id, frm, to, granularity, pipeline_ids,
                                       pipeline_name) if group else {}
        span = store.tier_span((frm, to), granularity, as_of, now,
                               await store.closed_through(conn, enterprise_id)
                               if as_of is None and granularity != "hour" else None)
        tallies: dict[tuple, insights_sums.Tally] = defaultdict(insights_sums.Tally)
        for r in await store.counters(conn, *args, span=span):
            tallies[(r["bucket"], r["pipeline_id"])].add_counters(r)
        for r in await store.recoveries(conn, *args, span=span):
            tally = tallies[(r["bucket"], r["pipeline_id"])]
            tally.recovered += r["n"]
            tally.micros += r["micros"]
        if span[0] < span[1]:
            await _add_totals(conn, tallies, enterprise_id, pipeline_ids or None,
                              pipeline_name, granularity, group, frm, span)
        rows = {key: (summaries, tally) for (key, tally), summaries
                in zip(tallies.items(), insights_sums.summaries(list(tallies.values())))
                if summaries or tally.recovered}
        if not group and granularity is None and (frm, None) not in rows:
            rows[(frm, None)] = ({}, insights_sums.Tally())  # one row for the window, even empty
        unnamed = {k[1] for k in rows if k[1] is not None} - names.keys()
        if unnamed:  # as of a past time: pipelines deleted since
            names.update(await store.pipeline_names(conn, enterprise_id, unnamed))
    answer = []
    for (bucket, pipeline_id) in sorted(rows, key=lambda k: (k[0], str(k[1] or ""))):
        begin = max(bucket, frm)
        finish = figures_of.bucket_end(bucket, granularity, to)
        row = {"bucket_start": begin, "bucket_end": finish}
        if group:
            row.update(pipeline_id=pipeline_id, pipeline_name=names.get(pipeline_id))
        days_long = (finish - begin).total_seconds() / 86400
        summaries, tally = rows[(bucket, pipeline_id)]
        row.update(figures_of.figures(summaries, (tally.recovered, tally.micros / 1e6),
                                      days_long))
        answer.append(row)
    return {"from": frm, "to": to, "as_of": as_of, "granularity": granularity,
            "group_by": group_by, "relative_error": figures_of.RELATIVE_ERROR, "rows": answer}


def _boundaries(first: datetime, last: datetime, granularity: str | None) -> list[datetime]:
    """first, each bucket start between first and last, and last (period starts)."""
    out = [first]
    while out[-1] < last:
        out.append(figures_of.bucket_end(figures_of.bucket_start(out[-1], granularity, first),
                                         granularity, last))
    return out


async def _add_totals(conn, tallies: dict, enterprise_id: str, pipeline_ids, pipeline_name,
                      granularity: str | None, group: bool, frm: datetime,
                      span: tuple) -> None:
    """The periods [first, last) of the window from the running totals: per bucket and
    member pipeline, its totals at the bucket's end less those at its start."""
    bounds = _boundaries(*span, granularity)
    per_pipeline = group or pipeline_ids is not None or pipeline_name is not None
    for r in await store.tier(conn, enterprise_id, pipeline_ids, pipeline_name, per_pipeline,
                              bounds):
        start = bounds[r["k"] - 2]  # k: the span's end in bounds, from 1
        tallies[(figures_of.bucket_start(start, granularity, frm),
                 r["pipeline_id"] if group else None)].add_totals(r)


async def _within_max_rows(conn, enterprise_id: str, frm: datetime, to: datetime,
                           granularity: str | None, pipeline_ids, pipeline_name) -> dict:
    """A grouped answer's rows are at most buckets × pipelines: refused before any work when
    that bound passes MAX_ROWS (a row for each is possible, so the bound is what counts).
    The pipelines' names {id: name} (all of them when the answer is not refused)."""
    buckets = figures_of.bucket_count(frm, to, granularity)
    pipelines, names = await store.live_pipelines(conn, enterprise_id, pipeline_ids or None,
                                                  pipeline_name, MAX_ROWS + 1)
    if buckets * pipelines > MAX_ROWS:
        raise BadRequest(
            f"the answer could hold {buckets:,} buckets × {pipelines:,} pipelines = "
            f"{buckets * pipelines:,} rows, at most {MAX_ROWS:,}: narrow the window, choose a "
            "coarser granularity, or filter the pipelines",
            content={"granularity": [f"at most {MAX_ROWS:,} rows (buckets × pipelines)"]})
    return names
