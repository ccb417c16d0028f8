"""The answers' vectorized summaries (insights_sums.summarize_many) equal, to the bit, the
plain definition (insights.summarize_dense) of each histogram's sum of parts: counts,
first and last bins, percentiles' bins and the sum of estimates behind the mean."""
from __future__ import annotations

import random
import struct

import pytest

from service.domain import insights_sums
from service.domain.insights import ESTIMATES, summarize_dense


def _stored(sign: int, first: int, counts: list[int]) -> tuple:
    """A part from a run_insights_totals histogram's bytes (Tally.add_totals)."""
    data = struct.pack(f">{len(counts) + 1}i", first, *counts)
    return (sign, first, first + len(counts), data)


def _parts(rng: random.Random) -> list[tuple]:
    """A histogram as a running total less an earlier one, plus sparse hourly parts."""
    lo = rng.randrange(0, len(ESTIMATES) - 700)
    width = rng.randrange(1, 600)
    before = [rng.choice((0, 0, rng.randrange(1, 50))) for _ in range(width)]
    upto = [b + rng.choice((0, rng.randrange(0, 10_000))) for b in before]
    parts = [_stored(1, lo, upto), _stored(-1, lo, before)]
    for _ in range(rng.randrange(0, 3)):  # hourly parts (Tally.add_counters), some overlapping
        bins = sorted(rng.sample(range(lo, lo + width + 5), 3))
        parts.append((1, bins[0], bins[-1] + 1, (bins, [rng.randrange(0, 5) for _ in bins])))
    return parts


def _dense(parts) -> tuple[int, list[int]]:
    """The plain sum of the parts: (first bin, counts)."""
    lo, hi = min(p[1] for p in parts), max(p[2] for p in parts)
    counts = [0] * (hi - lo)
    for sign, first, _, data in parts:
        if isinstance(data, bytes):
            values = struct.unpack(f">{len(data) // 4}i", data)[1:]
            bins = range(first, first + len(values))
        else:
            bins, values = data
        for b, v in zip(bins, values):
            counts[b - lo] += sign * v
    return lo, counts


@pytest.mark.parametrize("mean", [True, False])
def test_summarize_many_equals_summarize_dense(mean):
    rng = random.Random(21)
    hists = [_parts(rng) for _ in range(300)] + [[]]  # and one with no parts
    hists.append([_stored(1, 10, [4, 0, 2]), _stored(-1, 10, [4, 0, 2])])  # an empty sum
    got = insights_sums.summarize_many(hists, mean=mean)
    want = [summarize_dense(*_dense(parts), mean=mean) if parts else None for parts in hists]
    assert got == want
    assert got[-1] is None and got[-2] is None


def test_many_histograms_take_several_matrices(monkeypatch):
    """Chunks of the matrix (bounded memory) give the same figures as one matrix."""
    rng = random.Random(7)
    hists = [_parts(rng) for _ in range(50)]
    whole = insights_sums.summarize_many(hists, mean=True)
    monkeypatch.setattr(insights_sums, "_CELLS", 1000)
    assert insights_sums.summarize_many(hists, mean=True) == whole


def test_arrays_kept_between_answers_carry_nothing_over():
    """The matrices' arrays are reused (insights_sums._scratch): a small answer after a big
    one, and the big one again, give what each gives alone."""
    rng = random.Random(11)
    big, small = [_parts(rng) for _ in range(120)], [_parts(rng) for _ in range(3)]
    want = [[summarize_dense(*_dense(parts)) for parts in hists] for hists in (big, small)]
    for hists, expected in ((big, want[0]), (small, want[1]), (big, want[0])):
        assert insights_sums.summarize_many(hists, mean=True) == expected


def test_a_tally_adds_hourly_counters_in_any_order():
    """A row of the hourly counters (store/insights.py _BY_ROW): counts in columns (NULL:
    none), each histogram's bins unsorted and repeated (an hour added, another taken out),
    as their plain sum."""
    tally = insights_sums.Tally()
    tally.add_counters({"created": 5, "success": None, "failure": 0, "timeout": 2,
                        "invalid": None, "cancelled": None,
                        "duration_bins": [700, 650, 700, 690], "duration_ns": [3, 1, -1, 4],
                        "queue_bins": None, "queue_ns": None})
    tally.add_counters({"created": -1, "success": 1, "failure": None, "timeout": None,
                        "invalid": None, "cancelled": None,
                        "duration_bins": [650], "duration_ns": [-1],
                        "queue_bins": [10, 12], "queue_ns": [2, 0]})
    assert tally.counts == {"created": 4, "timeout": 2, "success": 1}
    (summaries,) = insights_sums.summaries([tally])
    counts = [0] * 51
    counts[40] += 4  # 690
    counts[50] += 2  # 700: 3 less 1
    assert summaries["duration"] == summarize_dense(650, counts)
    assert summaries["queue"] == summarize_dense(10, [2, 0, 0], mean=False)
    assert summaries["created"] == {"n": 4} and "failure" not in summaries
