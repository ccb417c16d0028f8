"""The Insights page under /ui/insights: charts and a per-pipeline table, and its CSV.

The same use case as GET /insights/runs/ (app/insights.py), behind the pages' session and
scope check; filters are a plain GET form.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields, validate

from service.app import audit
from service.app import insights as use
from service.domain.errors import BadRequest
from service.domain.insights import GRANULARITIES
from service.web import schemas as s
from service.web.handlers.common import connection
from service.web.keys import PRINCIPAL
from service.web.pages import charts
from service.web.pages.views import _form, _render, page

WINDOWS = {"1": 1, "7": 7, "30": 30, "90": 90, "180": 180, "366": 366}
CSV_COLUMNS = ("pipeline_name", "pipeline_id", "created", "success", "failure", "timeout",
               "invalid", "cancelled", "success_rate", "duration_p50", "duration_p95",
               "queue_p50", "queue_p95", "mttr_mean", "mttr_count")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


class InsightsPageQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    days = fields.String(load_default="30", validate=validate.OneOf(list(WINDOWS)))
    granularity = fields.String(load_default="day", validate=validate.OneOf(GRANULARITIES))
    pipeline_name = s.Text(validate=s.NAME)


def _cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: formulas neutralised with a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


# The per-pipeline table's buckets, coarsest last: when the chosen granularity would give
# more rows than an answer may hold (buckets × pipelines), the table's sparklines use the
# next coarser one and say so, rather than the page failing.
_COARSER = {"hour": ("hour", "day", "week", "month"), "day": ("day", "week", "month"),
            "week": ("week", "month"), "month": ("month",)}


async def _answers(request: web.Request, q: dict) -> tuple[dict, dict]:
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=WINDOWS[q["days"]])
    enterprise_id = request[PRINCIPAL].enterprise_id
    async with connection(request) as conn:
        over_time = await use.insights(conn, enterprise_id, start=start, end=now,
                                       granularity=q["granularity"],
                                       pipeline_name=q.get("pipeline_name"), now=now)
        for granularity in _COARSER[q["granularity"]]:
            try:
                by_pipeline = await use.insights(
                    conn, enterprise_id, start=start, end=now, granularity=granularity,
                    group_by="pipeline", pipeline_name=q.get("pipeline_name"), now=now)
                break
            except BadRequest:
                if granularity == "month":
                    raise
    return over_time, by_pipeline


def _buckets(q: dict, over_time: dict, by_pipeline: dict) -> list:
    """The sparklines' buckets: the charts' own, or the table's coarser ones (_COARSER)."""
    if by_pipeline["granularity"] == q["granularity"]:
        return [r["bucket_start"] for r in over_time["rows"]]
    return sorted({r["bucket_start"] for r in by_pipeline["rows"]})


def _table(by_pipeline: dict, buckets: list) -> list[dict]:
    """One row per pipeline: totals over the window and a sparkline of runs finished."""
    rows: dict = {}
    for r in by_pipeline["rows"]:
        row = rows.setdefault(r["pipeline_id"], {
            "pipeline_id": r["pipeline_id"], "pipeline_name": r["pipeline_name"], "created": 0,
            **{o: 0 for o in charts.OUTCOME_ORDER}, "per_bucket": {}, "p50": [], "p95": [],
            "queue": [], "queue95": [], "mttr": [0, 0.0]})
        row["created"] += r["created"]
        for o in charts.OUTCOME_ORDER:
            row[o] += r["finished"][o]
        row["per_bucket"][r["bucket_start"]] = r["finished"]["total"]
        for key, fig, n in (("p50", r["duration"]["p50"], r["duration"]["count"]),
                            ("p95", r["duration"]["p95"], r["duration"]["count"]),
                            ("queue", r["queue_time"]["p50"], r["queue_time"]["count"]),
                            ("queue95", r["queue_time"]["p95"], r["queue_time"]["count"])):
            if fig is not None:
                row[key].append((fig, n))
        if r["mttr"]["count"]:
            row["mttr"][0] += r["mttr"]["count"]
            row["mttr"][1] += r["mttr"]["mean"] * r["mttr"]["count"]
    out = []
    for row in sorted(rows.values(), key=lambda r: (r["pipeline_name"] or "", str(r["pipeline_id"]))):
        rated = row["success"] + row["failure"] + row["timeout"]
        row["success_rate"] = round(row["success"] / rated, 4) if rated else None
        # Per-bucket percentiles do not merge exactly: the table shows their run-weighted
        # mean (the API's group_by=pipeline without granularity has the exact ones).
        for key in ("p50", "p95", "queue", "queue95"):
            pairs = row.pop(key)
            total = sum(n for _, n in pairs)
            row[key] = round(sum(v * n for v, n in pairs) / total, 3) if total else None
        count, seconds = row.pop("mttr")
        row["mttr_count"], row["mttr_mean"] = count, round(seconds / count, 3) if count else None
        row["spark"] = charts.sparkline([row["per_bucket"].get(b, 0) for b in buckets])
        out.append(row)
    return out


@page()
async def insights(request: web.Request) -> web.Response:
    raw = _form(request)
    q = InsightsPageQuery().load(raw)
    over_time, by_pipeline = await _answers(request, q)
    rows = over_time["rows"]
    buckets = [r["bucket_start"] for r in rows]
    labels = [b.strftime("%m-%d %H:%M" if q["granularity"] == "hour" else "%m-%d")
              for b in buckets]
    durations = charts.lines(labels, {"p50": [r["duration"]["p50"] for r in rows],
                                      "p95": [r["duration"]["p95"] for r in rows]})
    queue = charts.lines(labels, {"p50": [r["queue_time"]["p50"] for r in rows],
                                  "p95": [r["queue_time"]["p95"] for r in rows]})
    outcomes = charts.stacked(labels, [r["finished"] for r in rows])
    choices = None
    async with connection(request) as conn:
        choices = await audit.pipeline_choices(conn, request[PRINCIPAL].enterprise_id)
    export = request.rel_url.with_path("/ui/insights/export").with_query(raw)
    return _render(request, "insights.html", {
        "q": q, "raw": raw, "answer": over_time, "durations": durations, "queue": queue,
        "outcomes": outcomes, "table": _table(by_pipeline, _buckets(q, over_time, by_pipeline)),
        "table_granularity": by_pipeline["granularity"], "windows": list(WINDOWS),
        "granularities": GRANULARITIES, "pipelines": choices, "export": str(export),
        "outcome_order": charts.OUTCOME_ORDER})


@page()
async def insights_export(request: web.Request) -> web.Response:
    q = InsightsPageQuery().load(_form(request))
    over_time, by_pipeline = await _answers(request, q)
    buckets = _buckets(q, over_time, by_pipeline)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in _table(by_pipeline, buckets):
        values = {**row, "duration_p50": row["p50"], "duration_p95": row["p95"],
                  "queue_p50": row["queue"], "queue_p95": row["queue95"]}
        writer.writerow([_cell(values.get(c)) for c in CSV_COLUMNS])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": 'attachment; filename="insights.csv"',
        "Cache-Control": "no-store"})


routes = [
    ("GET", "/ui/insights", insights),
    ("GET", "/ui/insights/export", insights_export),
]
