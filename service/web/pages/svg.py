"""The timeline picture's geometry: lanes, segments and markers placed on an SVG canvas.

The intervals come from service/domain/timeline.py; this only maps time to x. The template
(templates/timeline.svg.html) draws the result; Jinja escapes every text.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from service.domain.timeline import Lane

WIDTH = 1000
LABEL_WIDTH = 170  # the lane names, left of the plot
PLOT_LEFT, PLOT_RIGHT = LABEL_WIDTH + 10, WIDTH - 10
LANE_HEIGHT, LANE_GAP, TOP = 26, 8, 8
AXIS_HEIGHT = 26
MIN_WIDTH = 2.0  # a status held for an instant (a cascade) still shows


@dataclass
class Drawn:
    x: float
    width: float
    status: str
    title: str


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


def layout(lanes: list[Lane], start: datetime, end: datetime) -> dict[str, Any]:
    span = max((end - start).total_seconds(), 1e-6)
    scale = (PLOT_RIGHT - PLOT_LEFT) / span

    def x(at: datetime) -> float:
        return round(PLOT_LEFT + (at - start).total_seconds() * scale, 2)

    drawn = []
    for n, lane in enumerate(lanes):
        segments = [Drawn(x(seg.start), round(max(x(seg.end) - x(seg.start), MIN_WIDTH), 2),
                          seg.status,
                          f"{lane.label}: {seg.status} from {iso(seg.start)} to "
                          f"{iso(seg.end)}; set by {describe(seg.event)}")
                    for seg in lane.segments]
        markers = [Drawn(x(e["occurred_at"]), 0, e.get("to_status") or "deleted", describe(e))
                   for e in lane.markers]
        drawn.append(DrawnLane(lane.key, lane.label, TOP + n * (LANE_HEIGHT + LANE_GAP),
                               segments, markers))
    height = TOP + len(lanes) * (LANE_HEIGHT + LANE_GAP) + AXIS_HEIGHT
    return {"lanes": drawn, "width": WIDTH, "height": height, "lane_height": LANE_HEIGHT,
            "plot_left": PLOT_LEFT, "plot_right": PLOT_RIGHT, "axis_y": height - AXIS_HEIGHT,
            "start": iso(start), "end": iso(end)}
