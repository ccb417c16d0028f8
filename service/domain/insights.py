"""Insights, pure: the log bins of times, a run's insight keys, and a row's figures.

The projection (schema.sql, run_insights) counts each live run under a few keys (hour,
metric, bin); `run_cells` is its Python twin (replay compares the two), and `figures` turns
one answer row's counters into what the API answers.
"""
from __future__ import annotations

import bisect
import math
import struct
from itertools import accumulate
from operator import mul
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping
from uuid import UUID

from service.domain.lifecycle import TERMINAL

OUTCOMES: tuple[str, ...] = ("success", "failure", "timeout", "invalid", "cancelled")
# Success rate's denominator: cancelled and invalid runs say nothing of the pipeline's health.
RATED: tuple[str, ...] = ("success", "failure", "timeout")
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))
# A bin [lo, hi) has hi <= lo * 101/99, so its estimate 2*lo*top/(lo+top) (top = hi - 1, the
# largest microsecond in it) is within (top-lo)/(top+lo) < 1/100 of every value in it.
RELATIVE_ERROR = 0.01
_LAST = 3153600000000000  # 100 years in microseconds (schema.sql insights_bounds)
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
# The pipeline id of the enterprise's rollup in the running totals (no pipeline has it).
ALL_PIPELINES = UUID(int=0)
# The running totals' period (schema.sql insights_period: 6-hour periods from midnight UTC).
PERIOD = timedelta(hours=6)


def _bounds() -> list[int]:
    bounds = [1]
    while bounds[-1] < _LAST:
        t = bounds[-1]
        bounds.append(max(t + 1, t * 101 // 99))
    return bounds


BOUNDS: list[int] = _bounds()


def bin_of(micros: int) -> int:
    """How many bounds are <= micros (0: under a microsecond): SQL's insights_bin."""
    return bisect.bisect_right(BOUNDS, micros)


def estimate(bin_: int) -> float:
    """The microseconds a bin stands for (within RELATIVE_ERROR of each value in it)."""
    if bin_ <= 0:
        return 0.0
    lo = BOUNDS[bin_ - 1]
    if bin_ >= len(BOUNDS):
        return float(lo)
    top = BOUNDS[bin_] - 1
    return 2.0 * lo * top / (lo + top)


# Each bin's estimate, by bin (summarize_dense and insights_sums take a histogram's slice).
ESTIMATES: list[float] = [estimate(b) for b in range(len(BOUNDS) + 1)]
# The metrics counted as histograms (bins of times); the others are counts (bin 0).
HISTOGRAMS: tuple[str, ...] = ("duration", "queue")
# The running totals' counts (schema.sql run_insights_totals), by column.
TOTAL_COUNTS: tuple[str, ...] = ("created", *OUTCOMES)


def _hour(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


_HOUR = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)
_EPOCH_DAY = _EPOCH.toordinal()


def hour_at(number: int) -> datetime:
    """The start of an hour given as its number (run_cells' hours)."""
    return _EPOCH + number * _HOUR


def _hour_number(at: datetime) -> int:
    """The UTC hour `at` falls in, as UTC hours since _EPOCH (from the date and the hour:
    cheaper than a timedelta's division, for the times the database gives, in UTC)."""
    if at.tzinfo is not timezone.utc:
        at = at.astimezone(timezone.utc)
    return (at.toordinal() - _EPOCH_DAY) * 24 + at.hour


def run_cells(created_at: datetime, started_at: datetime | None, ended_at: datetime | None,
              status: str) -> list[tuple[int, str, int]]:
    """A run's (hour, metric, bin) keys, SQL's run_insight_keys, the hour a number: UTC hours
    since _EPOCH (replay counts these for every run: integers hash and pickle cheaply where
    datetimes did not)."""
    cells = [(_hour_number(created_at), "created", 0)]
    if status in TERMINAL:
        ended = _hour_number(ended_at)
        cells.append((ended, status, 0))
        if started_at is not None:
            cells.append((ended, "duration", bin_of((ended_at - started_at) // _MICROSECOND)))
    if started_at is not None:
        cells.append((_hour_number(started_at), "queue",
                      bin_of((started_at - created_at) // _MICROSECOND)))
    return cells


def run_groups(pipeline_id, created_at: datetime, started_at: datetime | None,
               ended_at: datetime | None, status: str) -> tuple[tuple[Any, list], ...]:
    """A run's run_insights rows as (pipeline, its run_cells): its keys under its pipeline
    (run_insights_note_keys in SQL), for replay's comparison."""
    return ((pipeline_id, run_cells(created_at, started_at, ended_at, status)),)


# A run_insights_totals row's columns after (enterprise, pipeline, at): the counts, then
# each histogram as (first bin, counts) ((None, ()) when empty).
TOTAL_COLUMNS: tuple[str, ...] = (*TOTAL_COUNTS, "recovered", "recovered_micros", *HISTOGRAMS)


def _widen(hist: list, bin_: int, n: int) -> None:
    """hist = [lo, counts]: n added at bin_, the counts widened to reach it."""
    lo, counts = hist
    if not counts:
        hist[0], hist[1] = bin_, [n]
        return
    if bin_ < lo:
        counts[:0] = [0] * (lo - bin_)
        hist[0] = lo = bin_
    if bin_ >= lo + len(counts):
        counts.extend([0] * (bin_ - lo - len(counts) + 1))
    counts[bin_ - lo] += n


def histogram_of(stored: bytes) -> tuple[int | None, tuple[int, ...]]:
    """A run_insights_totals histogram's bytes (schema.sql: the first bin, then the counts,
    big-endian int4s) as total_rows gives it: (first bin, counts); (None, ()) when empty."""
    if not stored:
        return None, ()
    lo, *counts = struct.unpack(f">{len(stored) // 4}i", stored)
    return lo, tuple(counts)


def period_of(hour: int) -> datetime:
    """The start of the 6-hour period an hour (a number: run_cells') is in (SQL's
    insights_period)."""
    return hour_at(hour - hour % 6)


def hour_start(at: datetime) -> datetime:
    """The start of the UTC hour a time is in (SQL's insights_hour)."""
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def total_rows(periods: Mapping[datetime, Mapping[tuple[str, int], int]]) -> list[tuple]:
    """A pipeline's run_insights_totals rows (at, *TOTAL_COLUMNS) from each period's own
    counts {(metric, bin): n} (its run_insights keys, and 'recovered' and 'recovered_micros'
    at bin 0): the running totals at each period that has something (SQL's
    run_insights_totals_add; replay compares the two). The counts are a fold's: none
    negative, nothing to trim."""
    totals = dict.fromkeys(TOTAL_COLUMNS[:-len(HISTOGRAMS)], 0)
    hists = {m: [None, []] for m in HISTOGRAMS}
    rows = []
    for at in sorted(periods):
        own = {k: n for k, n in periods[at].items() if n}
        if not own:
            continue
        for (metric, bin_), n in own.items():
            if metric in hists:
                _widen(hists[metric], bin_, n)
            else:
                totals[metric] += n
        rows.append((at, *totals.values(),
                     *((h[0], tuple(h[1])) for h in hists.values())))
    return rows


def bucket_start(at: datetime, granularity: str | None, window_from: datetime) -> datetime:
    """The start of the bucket `at` falls in (UTC; weeks start on Monday)."""
    at = at.astimezone(timezone.utc)
    if granularity == "hour":
        return _hour(at)
    if granularity == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "week":
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=day.weekday())
    if granularity == "month":
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return window_from


def bucket_count(window_from: datetime, window_to: datetime, granularity: str | None) -> int:
    """How many buckets the window has (exact: the buckets are walked, at most ~8,800)."""
    count, at = 0, bucket_start(window_from, granularity, window_from)
    while at < window_to:
        count, at = count + 1, bucket_end(at, granularity, window_to)
        if granularity is None:
            break
    return count


def bucket_end(start: datetime, granularity: str | None, window_to: datetime) -> datetime:
    """The end of a bucket (exclusive), never past the window's end."""
    if granularity is None:
        return window_to
    if granularity == "month":
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        end = start + {"hour": timedelta(hours=1), "day": timedelta(days=1),
                       "week": timedelta(days=7)}[granularity]
    return min(end, window_to)


def _seconds(micros: float | None) -> float | None:
    return None if micros is None else round(micros / 1e6, 6)


# Each bin's estimate in seconds, by bin (distribution's min, percentiles and max).
SECONDS: list[float] = [_seconds(e) for e in ESTIMATES]


def summarize_dense(lo: int, counts, mean: bool = True) -> dict[str, Any] | None:
    """A dense histogram's summary (counts[i] in bin lo + i; zeros allowed; None when
    empty): n, lo, hi (its first and last nonzero bin), micros (the sum of the bins'
    estimates, None unless `mean`: queue times show no mean) and each percentile's bin: the
    bin of the value of rank floor(q (n-1)), found by bisection in its running sum. The
    plain definition: the answers compute it for all their histograms at once
    (insights_sums.py summarize_many), to the bit the same."""
    cum = list(accumulate(counts))
    total = cum[-1] if cum else 0
    if total <= 0:
        return None
    summary = {"n": total, "lo": lo + bisect.bisect_right(cum, 0),
               "hi": lo + bisect.bisect_left(cum, total),
               "micros": sum(map(mul, counts, ESTIMATES[lo:lo + len(counts)])) if mean
               else None}
    for key, q in PERCENTILES:
        summary[key] = lo + bisect.bisect_right(cum, math.floor(q * (total - 1)))
    return summary


def distribution(summary: Mapping[str, Any] | None,
                 percentiles=PERCENTILES) -> dict[str, Any]:
    """count, min, mean, percentiles, max (seconds) from a metric's summary (summarize)."""
    n = summary["n"] if summary else 0
    if not n:
        return {"count": 0, "min": None, "mean": None, **{k: None for k, _ in percentiles},
                "max": None}
    micros = summary["micros"]
    return {"count": n, "min": SECONDS[summary["lo"]],
            "mean": None if micros is None else _seconds(micros / n),
            **{k: SECONDS[summary[k]] for k, _ in percentiles},
            "max": SECONDS[summary["hi"]]}


_NO_QUEUE = {"count": 0, "p50": None, "p95": None}


def figures(summaries: Mapping[str, Mapping[str, Any]], recoveries: tuple[int, float],
            days: float) -> dict[str, Any]:
    """One row's figures from its summaries {metric: summary} and (recoveries, seconds)."""
    finished = {o: summaries[o]["n"] if o in summaries else 0 for o in OUTCOMES}
    rated = sum([finished[o] for o in RATED])
    done = sum(finished.values())
    finished["total"] = done
    recovered, seconds = recoveries
    queue = summaries.get("queue")
    return {
        "created": summaries["created"]["n"] if "created" in summaries else 0,
        "finished": finished,
        "success_rate": {"value": round(finished["success"] / rated, 6) if rated else None,
                         "count": rated},
        "duration": distribution(summaries.get("duration")),
        "queue_time": {"count": queue["n"], "p50": SECONDS[queue["p50"]],
                       "p95": SECONDS[queue["p95"]]} if queue else dict(_NO_QUEUE),
        "throughput": {"finished": done, "per_day": round(done / days, 6) if days else None},
        "mttr": {"count": recovered,
                 "mean": round(seconds / recovered, 6) if recovered else None},
    }
