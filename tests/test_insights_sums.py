"""The answers' vectorized summaries (insights_sums.summarize_many) equal, to the bit, the
plain definition (insights.summarize_dense) of each histogram's sum of parts: counts,
first and last bins, percentiles' bins and the sum of estimates behind the mean."""
from __future__ import annotations

import random

import numpy as np
import pytest

from service.domain import insights_sums
from service.domain.insights import ESTIMATES, summarize_dense


def _parts(rng: random.Random) -> list[tuple[int, int, np.ndarray]]:
    """A histogram as a running total less an earlier one, plus sparse hourly parts."""
    lo = rng.randrange(0, len(ESTIMATES) - 700)
    width = rng.randrange(1, 600)
    before = [rng.choice((0, 0, rng.randrange(1, 50))) for _ in range(width)]
    upto = [b + rng.choice((0, rng.randrange(0, 10_000))) for b in before]
    parts = [(1, lo, np.array(upto, dtype=">i4")), (-1, lo, np.array(before, dtype=">i4"))]
    for _ in range(rng.randrange(0, 3)):  # hourly parts, added or taken out where present
        first = lo + rng.randrange(0, width)
        parts.append((1, first, np.array([rng.randrange(0, 5) for _ in range(3)])))
    return parts


def _dense(parts) -> tuple[int, list[int]]:
    lo = min(first for _, first, _ in parts)
    hi = max(first + len(v) for _, first, v in parts)
    counts = [0] * (hi - lo)
    for sign, first, values in parts:
        for i, v in enumerate(values):
            counts[first - lo + i] += sign * int(v)
    return lo, counts


@pytest.mark.parametrize("mean", [True, False])
def test_summarize_many_equals_summarize_dense(mean):
    rng = random.Random(21)
    hists = [_parts(rng) for _ in range(300)] + [[]]  # and one with no parts
    hists.append([(1, 10, np.array([4, 0, 2])), (-1, 10, np.array([4, 0, 2]))])  # empty sum
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
