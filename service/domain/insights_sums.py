"""Insights: an answer's counters gathered per row and summarized all at once (numpy)."""
from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

import numpy as np

from service.domain.insights import ESTIMATES, HISTOGRAMS, PERCENTILES, TOTAL_COUNTS

_ESTIMATES = np.array(ESTIMATES, dtype=np.float64)
# Cells (histograms × bins) of one matrix at most: 2 MB of int64, however many rows an
# answer has (up to 10,000 by the hour, each up to ~1,800 bins wide).
_CELLS = 1 << 18


class _Scratch(threading.local):
    """The matrices' arrays, kept from one answer to the next (per thread). Fresh arrays of
    a few MB each time cost a page fault per 4 KB (the allocator hands memory that large
    back to the system when freed): ~770 faults, a third of the summaries' CPU, per grouped
    90-day answer."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """An uninitialized array of this shape, the same memory as the last one `name`."""
        size = shape[0] * shape[1] if len(shape) == 2 else shape[0]
        kept = self.arrays.get(name)
        if kept is None or kept.size < size:
            kept = self.arrays[name] = np.empty(size, dtype=dtype)
        return kept[:size].reshape(shape)


_scratch = _Scratch()


class Tally:
    """One answer row's counters as they are gathered: counts per metric, the parts of each
    histogram, and recoveries (count, microseconds). A part is (sign, first bin, last bin +
    1, data): data a run_insights_totals histogram's bytes (schema.sql: the first bin, then
    the counts, big-endian int4s), or (bins, ns) of the hourly rows (any order, a bin
    possibly twice: they add up). Both are read when summarized, all of a matrix's at once
    (no numpy call per part here)."""

    __slots__ = ("counts", "parts", "recovered", "micros")

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.parts: dict[str, list] = {}
        self.recovered = 0
        self.micros = 0

    def add_counters(self, row: Mapping[str, Any]) -> None:
        """A row of the hourly counters (store/insights.py _BY_ROW): counts (NULL: none) and
        each histogram's bins and counts (n < 0: taken out), in any order, repeats added."""
        for metric in TOTAL_COUNTS:
            n = row[metric]
            if n:
                self.counts[metric] = self.counts.get(metric, 0) + n
        for metric in HISTOGRAMS:
            bins = row[metric + "_bins"]
            if bins:
                self.parts.setdefault(metric, []).append(
                    (1, min(bins), max(bins) + 1, (bins, row[metric + "_ns"])))

    def add_totals(self, row: Mapping[str, Any]) -> None:
        """The running totals over a span (store/insights.py _TIER): the counts' differences
        and both ends' histograms, added (row["sign"] 1) or taken out (-1)."""
        sign = row["sign"]
        for metric in TOTAL_COUNTS:
            if row[metric]:
                self.counts[metric] = self.counts.get(metric, 0) + sign * row[metric]
        for metric in HISTOGRAMS:
            self._add_stored(metric, sign, row[metric])
            self._add_stored(metric, -sign, row[metric + "_before"])
        self.recovered += sign * row["recovered"]
        self.micros += sign * row["recovered_micros"]

    def _add_stored(self, metric: str, sign: int, stored: bytes | None) -> None:
        if stored:  # empty: no bytes; None: no row before the span
            first = int.from_bytes(stored[:4], "big", signed=True)
            self.parts.setdefault(metric, []).append(
                (sign, first, first + len(stored) // 4 - 1, stored))


def summaries(tallies: Sequence[Tally]) -> list[dict[str, dict[str, Any]]]:
    """Each tally's {metric: summary} of what is not zero (figures' input)."""
    out = [{m: {"n": n} for m, n in t.counts.items() if n} for t in tallies]
    for metric in HISTOGRAMS:
        which = [i for i, t in enumerate(tallies) if metric in t.parts]
        found = summarize_many([tallies[i].parts[metric] for i in which],
                               mean=metric == "duration")
        for i, summary in zip(which, found):
            if summary:
                out[i][metric] = summary
    return out


def summarize_many(hists: Sequence[list[tuple]], mean: bool) -> list[dict | None]:
    """For each histogram given as its parts (Tally's), summed: what domain/insights.py
    summarize_dense gives for the sum (None: empty), to the bit. The histograms are the rows
    of a matrix over their bins, each figure one vectorized pass over it instead of a Python
    step per bin; the mean's sum is a running sum along the row, in bin order, as Python's
    sum adds."""
    out: list[dict | None] = [None] * len(hists)
    spans = [(min(p[1] for p in parts), max(p[2] for p in parts), i)
             for i, parts in enumerate(hists) if parts]
    chunk: list[int] = []
    lo = hi = 0
    for h_lo, h_hi, i in sorted(spans):  # by first bin: neighbours share most of their bins
        if chunk and (len(chunk) + 1) * (max(hi, h_hi) - min(lo, h_lo)) > _CELLS:
            _summarize_chunk(hists, chunk, lo, hi, mean, out)
            chunk = []
        lo, hi = (min(lo, h_lo), max(hi, h_hi)) if chunk else (h_lo, h_hi)
        chunk.append(i)
    if chunk:
        _summarize_chunk(hists, chunk, lo, hi, mean, out)
    return out


def _matrix(hists, rows: list[int], lo: int, width: int) -> np.ndarray:
    """The histograms `rows` summed from their parts, as the rows of a matrix over the bins
    [lo, lo + width): every stored part's bytes read at once (one conversion), each added in
    place; the hourly parts' counts added by one indexed addition."""
    flat = _scratch.array("counts", (len(rows) * width,), np.int64)
    flat.fill(0)
    stored, at, ns = [], [], []
    for k, i in enumerate(rows):
        base = k * width - lo
        for sign, first, end, data in hists[i]:
            if isinstance(data, bytes):
                stored.append((base + first, end - first, sign, data))
            else:
                at.extend([base + b for b in data[0]])
                ns.extend(data[1])
    if stored:
        data = np.frombuffer(b"".join([s[3] for s in stored]), dtype=">i4")
        values = _scratch.array("values", data.shape, np.int64)
        np.copyto(values, data)
        offset = 1  # past each part's first bin
        for start, n, sign, _ in stored:
            if sign > 0:
                flat[start:start + n] += values[offset:offset + n]
            else:
                flat[start:start + n] -= values[offset:offset + n]
            offset += n + 1
    if at:
        np.add.at(flat, np.array(at, dtype=np.intp), np.array(ns, dtype=np.int64))
    return flat.reshape(len(rows), width)


def _summarize_chunk(hists, rows: list[int], lo: int, hi: int, mean: bool,
                     out: list) -> None:
    """The histograms `rows` (bins within [lo, hi)) summarized into out[row]."""
    counts = _matrix(hists, rows, lo, hi - lo)
    cum = np.cumsum(counts, axis=1, out=_scratch.array("cum", counts.shape, np.int64))
    total = cum[:, -1:]
    below = _scratch.array("below", counts.shape, np.bool_)

    def how_many(compare, bound) -> np.ndarray:  # per row, the cells where compare holds
        return np.count_nonzero(compare(cum, bound, out=below), axis=1)

    found = {"n": total[:, 0],
             "lo": lo + how_many(np.less_equal, 0),  # bisect_right(cum, 0)
             "hi": lo + how_many(np.less, total)}  # bisect_left(cum, total)
    for key, q in PERCENTILES:  # floor(q (n - 1)) in float64, as math.floor of q * int
        rank = np.floor(q * (total - 1).astype(np.float64)).astype(np.int64)
        found[key] = lo + how_many(np.less_equal, rank)
    columns = {key: v.tolist() for key, v in found.items()}
    micros = [None] * len(rows)
    if mean:  # a running sum along each row: bin order, as Python's sum adds
        estimated = np.multiply(counts, _ESTIMATES[lo:hi],
                                out=_scratch.array("estimated", counts.shape, np.float64))
        micros = np.cumsum(estimated, axis=1, out=_scratch.array(
            "running", counts.shape, np.float64))[:, -1].tolist()
    for k, i in enumerate(rows):
        if columns["n"][k] > 0:
            out[i] = {"n": columns["n"][k], "lo": columns["lo"][k], "hi": columns["hi"][k],
                      "micros": micros[k], **{key: columns[key][k] for key, _ in PERCENTILES}}
