"""The Insights page's SVG charts, as geometry: bars and polylines on a fixed canvas.

Only numbers and escaped text leave here; the template (insights.html) draws them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 8, 22
OUTCOME_ORDER = ("success", "failure", "timeout", "invalid", "cancelled")


@dataclass
class Chart:
    """A chart: lines (name, points), bars (x, y, w, h, css class, title), y ticks, x labels."""
    lines: list[tuple[str, str]] = field(default_factory=list)
    bars: list[tuple[float, float, float, float, str, str]] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    labels: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT


def _scale(top: float) -> float:
    return top if top > 0 else 1.0


def _x(i: int, n: int) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (i + 0.5) / max(n, 1)


def _y(value: float, top: float) -> float:
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / _scale(top))


def _human(value: float, unit: str) -> str:
    """A tick's text: seconds as 45s, 12m, 3.5h, 2.1d; counts as they are."""
    if unit != "s":
        return f"{value:.0f}"
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}s"


def _frame(chart: Chart, labels: list[str], top: float, unit: str) -> Chart:
    chart.ticks = [(_y(top * f, top), _human(top * f, unit)) for f in (0, 0.5, 1)]
    step = max(1, -(-len(labels) // 6))
    chart.labels = [(_x(i, len(labels)), text) for i, text in enumerate(labels) if i % step == 0]
    return chart


def lines(labels: list[str], series: dict[str, list[float | None]], unit: str = "s") -> Chart:
    """One polyline per series (gaps where a value is None)."""
    top = max((v for vs in series.values() for v in vs if v is not None), default=0.0)
    chart = Chart()
    for name, values in series.items():
        points = " ".join(f"{_x(i, len(values)):.1f},{_y(v, top):.1f}"
                          for i, v in enumerate(values) if v is not None)
        chart.lines.append((name, points))
    return _frame(chart, labels, top, unit)


def stacked(labels: list[str], stacks: list[dict[str, int]]) -> Chart:
    """Outcome bars per bucket, stacked in OUTCOME_ORDER."""
    top = float(max((sum(s.values()) for s in stacks), default=0))
    chart = Chart()
    width = (WIDTH - LEFT - RIGHT) / max(len(stacks), 1) * 0.8
    for i, stack in enumerate(stacks):
        base = 0
        for outcome in OUTCOME_ORDER:
            n = stack.get(outcome, 0)
            if n:
                y_top, y_base = _y(base + n, top), _y(base, top)
                chart.bars.append((_x(i, len(stacks)) - width / 2, y_top, width,
                                   y_base - y_top, f"st-{outcome}", f"{labels[i]}: {n} {outcome}"))
                base += n
    return _frame(chart, labels, top, "")


def sparkline(values: list[float | None], width: int = 120, height: int = 24) -> str:
    """A small polyline's points (None values skipped)."""
    top = _scale(max((v for v in values if v is not None), default=0.0))
    n = max(len(values), 1)
    return " ".join(f"{width * (i + 0.5) / n:.1f},{height - 2 - (height - 4) * v / top:.1f}"
                    for i, v in enumerate(values) if v is not None)
