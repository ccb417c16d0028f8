"""A run's timeline, pure: its state at an instant and its status intervals, from its events.

The state comes from lifecycle.fold (the one fold); the intervals are the history read
lane by lane: a lane (the run, or one stage run) is in a status from the event that set it
until the next event that changes it, or until the end of the view.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

from service.domain import lifecycle

RUN_LANE = "run"
_SECOND = timedelta(seconds=1)


@dataclass
class Segment:
    """One status interval of a lane: [start, end), set by `event`."""

    status: str
    start: datetime
    end: datetime
    event: Mapping[str, Any]


@dataclass
class Lane:
    key: str  # RUN_LANE, or a stage run's id
    label: str
    segments: list[Segment] = field(default_factory=list)
    markers: list[Mapping[str, Any]] = field(default_factory=list)  # the lane's events


@dataclass
class View:
    """A run as of an instant (or now): its folded state, and whether it was deleted."""

    state: dict[str, Any]
    deleted: Mapping[str, Any] | None  # the run.deleted event, if the view reaches it
    events: list[Mapping[str, Any]]  # the events up to the instant
    lanes: list[Lane]
    start: datetime
    end: datetime


def until(events: Sequence[Mapping[str, Any]], at: datetime | None) -> list[Mapping[str, Any]]:
    """The events up to `at` inclusive (all of them when None); versions give the order."""
    if at is None:
        return list(events)
    out = []
    for event in events:
        if event["occurred_at"] > at:
            break
        out.append(event)
    return out


def view(events: Sequence[Mapping[str, Any]], at: datetime | None,
         now: datetime) -> View | None:
    """The run as of `at` (None: now); None if it did not exist yet.

    A deleted run folds to None: it is shown as it was just before its deletion.
    """
    seen = until(events, at)
    deleted = next((e for e in seen if e["type"] == lifecycle.RUN_DELETED), None)
    state = lifecycle.fold(e for e in seen if e["type"] != lifecycle.RUN_DELETED)
    if state is None:
        return None
    end = _end(seen, state, deleted, at, now)
    return View(state, deleted, seen, lanes(seen, state, end), state["created_at"], end)


def _end(seen, state, deleted, at, now) -> datetime:
    """Where the picture ends: the instant viewed, or now while the run is open."""
    last = seen[-1]["occurred_at"]
    if at is not None:
        return max(at, last)
    if deleted is not None or state["status"] in lifecycle.TERMINAL:
        # Finished: end a little after the last event, so its final status shows.
        return last + max((last - state["created_at"]) / 20, _SECOND)
    return max(now, last)


def lanes(events: Sequence[Mapping[str, Any]], state: Mapping[str, Any],
          end: datetime) -> list[Lane]:
    """One lane for the run and one per stage run, in stage order."""
    run = Lane(RUN_LANE, f"Run #{state['run_number']}")
    stage_lanes = {str(s["id"]): Lane(str(s["id"]), s["stage_meta"]["name"])
                   for s in state["stage_runs"]}
    for event in events:
        if event["type"] == lifecycle.RUN_CREATED:
            _enter(run, event, event["to_status"])
            for lane in stage_lanes.values():
                _enter(lane, event, lifecycle.INITIAL_STATUS, marker=False)
        elif event["type"] == lifecycle.STAGE_RUN_STATUS_CHANGED:
            lane = stage_lanes.get(str((event.get("data") or {}).get("stage_run_id")))
            if lane is not None:
                _enter(lane, event, event["to_status"])
        elif event["type"] == lifecycle.RUN_STATUS_CHANGED:
            _enter(run, event, event["to_status"])
        else:  # run.deleted: a marker, no new status
            run.markers.append(event)
    out = [run, *stage_lanes.values()]
    for lane in out:
        if lane.segments:
            lane.segments[-1].end = end
    return out


def _enter(lane: Lane, event: Mapping[str, Any], status: str, marker: bool = True) -> None:
    at = event["occurred_at"]
    if lane.segments:
        lane.segments[-1].end = at
    lane.segments.append(Segment(status, at, at, event))
    if marker:
        lane.markers.append(event)


