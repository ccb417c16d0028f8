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
    for _ in range(rng.randrange(0, 3)):  # hourly parts (Tally.add_bins), some overlapping
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
