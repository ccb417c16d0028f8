"""The timeline picture's geometry: lanes, segments, markers and axis ticks on an SVG canvas.

The intervals come from service/domain/timeline.py; this only maps time to x, in two
layouts: a wide one (lane names left of the plot) and a narrow one for phones (names above
their lane, fewer ticks), so text keeps its size instead of shrinking with the picture.
The template (templates/timeline.svg.html) draws the result; Jinja escapes every text.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from service.domain.timeline import Lane

# Terminal statuses carry a shape besides their colour (badges, segments, legend), so no
# one needs to tell colours apart; ui.css draws the same glyphs and patterns.
GLYPHS = {"success": "✓", "failure": "✕", "cancelled": "⊘", "timeout": "◷", "invalid": "!"}
PATTERNS = ("failure", "cancelled", "timeout", "invalid")  # success: the one solid green
CHAR_WIDTH = 7.2  # an average character of the 12 px segment labels, for fitting text


@dataclass(frozen=True)
class Variant:
    """One layout of the picture."""

    name: str
    width: int
    names_left: bool  # lane names in a column left of the plot, else above each lane
    plot_left: int
    plot_right: int
    lane_height: int  # the bar
    name_height: int  # the name's row above the bar (0 when names are left)
    gap: int
    max_ticks: int
    min_width: float  # a status held for an instant (a cascade) still shows


WIDE = Variant("wide", 1000, True, 180, 990, 26, 0, 8, 6, 6.0)
NARROW = Variant("narrow", 380, False, 6, 374, 24, 17, 8, 3, 5.0)
TOP, AXIS_HEIGHT = 8, 30
MIN_WIDTH = WIDE.min_width
TICK_STEPS = [timedelta(seconds=s) for s in (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)]


@dataclass
class Drawn:
    x: float
    width: float
    status: str
    title: str
    glyph: str = ""
    text: bool = False  # the status's name fits inside the segment


@dataclass
class DrawnLane:
    key: str
    label: str
    y: float
    segments: list[Drawn]
    markers: list[Drawn]


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def describe(event: Mapping[str, Any]) -> str:
    """An event in one line: what, who, when, from -> to, why."""
    moved = (f"{event['from_status'] or '∅'} → {event['to_status']}"
             if event.get("to_status") else "")
    reason = (event.get("data") or {}).get("reason")
    parts = [f"{event['type']} v{event['version']}", f"by {event['actor']}",
             f"at {iso(event['occurred_at'])}", moved, f"reason: {reason}" if reason else ""]
    return ", ".join(p for p in parts if p)


def widths(natural: list[float], minimum: float) -> list[float]:
    """Widths of one lane's contiguous segments, each at least `minimum`, same total.

    What the short ones gain, the others give up in proportion to their excess over the
    minimum; so the lane keeps its length and its later segments stay in place on average.
    """
    total = sum(natural)
    if not natural or total <= 0:
        return [minimum for _ in natural]
    minimum = min(minimum, total / len(natural))
    short = sum(minimum - w for w in natural if w < minimum)
    spare = sum(w - minimum for w in natural if w > minimum)
    if short <= 0 or spare <= 0:
        return [max(w, minimum) for w in natural]
    return [minimum if w <= minimum else w - (w - minimum) * short / spare for w in natural]


def ticks(start: datetime, end: datetime, most: int) -> list[tuple[datetime, str]]:
    """Round instants between start and end, at most `most`, labelled without fractions."""
    span = end - start
    step = next((s for s in TICK_STEPS if span / s <= most), TICK_STEPS[-1])
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    first = epoch + step * -(-(start - epoch) // step)  # the first multiple at or after start
    if step >= timedelta(days=1):
        fmt = "%m-%d"
    elif step >= timedelta(minutes=1):
        fmt = "%H:%M" if span < timedelta(days=1) else "%m-%d %H:%M"
    else:
        fmt = "%H:%M:%S"
    out, at = [], first
    while at <= end and len(out) < most:
        out.append((at, at.astimezone(timezone.utc).strftime(fmt)))
        at += step
    return out


def layout(lanes: list[Lane], start: datetime, end: datetime,
           variant: Variant = WIDE) -> dict[str, Any]:
    span = max((end - start).total_seconds(), 1e-6)
    scale = (variant.plot_right - variant.plot_left) / span

    def x(at: datetime) -> float:
        return round(variant.plot_left + (at - start).total_seconds() * scale, 2)

    step = variant.name_height + variant.lane_height + variant.gap
    drawn = [_lane(lane, x, variant, TOP + n * step) for n, lane in enumerate(lanes)]
    height = TOP + len(lanes) * step + AXIS_HEIGHT
    axis_y = height - AXIS_HEIGHT + 4
    return {"variant": variant.name, "wide": variant.names_left, "lanes": drawn,
            "width": variant.width, "height": height, "lane_height": variant.lane_height,
            "bar_y": variant.name_height, "plot_left": variant.plot_left,
            "plot_right": variant.plot_right, "axis_y": axis_y,
            "ticks": [(x(at), label, iso(at)) for at, label in ticks(start, end,
                                                                   variant.max_ticks)],
            "day": start.astimezone(timezone.utc).strftime("%Y-%m-%d"),
            "start": iso(start), "end": iso(end), "patterns": PATTERNS}


def _lane(lane: Lane, x, variant: Variant, y: float) -> DrawnLane:
    """One lane: segments at least min_width wide, markers on their segments' starts."""
    left = x(lane.segments[0].start) if lane.segments else variant.plot_left
    sized = widths([x(s.end) - x(s.start) for s in lane.segments], variant.min_width)
    segments, starts = [], {}
    for seg, width in zip(lane.segments, sized):
        width = round(width, 2)
        glyph = GLYPHS.get(seg.status, "")
        text = width >= len(glyph + seg.status) * CHAR_WIDTH + 12
        segments.append(Drawn(round(left, 2), width, seg.status,
                              f"{lane.label}: {seg.status} from {iso(seg.start)} to "
                              f"{iso(seg.end)}; set by {describe(seg.event)}", glyph, text))
        starts[id(seg.event)] = round(left, 2)
        left += width
    last = segments[-1].x if segments else variant.plot_left
    markers = [Drawn(starts.get(id(e), max(x(e["occurred_at"]), last)), 0,
                     e.get("to_status") or "deleted", describe(e)) for e in lane.markers]
    return DrawnLane(lane.key, lane.label, y, segments, markers)
