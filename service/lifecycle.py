"""The run lifecycle, pure: statuses, legal transitions, and how each event changes a run.

The live write path and replay/as_of both use this module, so they cannot drift:
the write path asks it which moves are legal and what a move stamps, replay folds
events with `apply`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

# Lifecycle order: also the sort order of `ordering=status`.
RUN_STATUSES: tuple[str, ...] = (
    "pending", "queued", "processing", "running", "waiting",
    "complete", "success", "failure", "cancelled", "timeout", "invalid",
)
STAGE_RUN_STATUSES: tuple[str, ...] = tuple(s for s in RUN_STATUSES if s != "waiting")
TERMINAL: frozenset[str] = frozenset({"success", "failure", "cancelled", "timeout", "invalid"})
STATUS_RANK: dict[str, int] = {s: i for i, s in enumerate(RUN_STATUSES)}

RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"queued", "processing", "running", "cancelled", "timeout", "invalid"}),
    "queued": frozenset({"processing", "running", "cancelled", "timeout", "invalid"}),
    "processing": frozenset({"running", "cancelled", "timeout", "invalid"}),
    "running": frozenset({"waiting", "complete", "cancelled", "timeout"}),
    "waiting": frozenset({"running", "complete", "cancelled", "timeout"}),
    "complete": frozenset({"success", "failure"}),
    **{s: frozenset() for s in TERMINAL},
}
# Stage runs follow the run rules without `waiting`.
STAGE_RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    s: targets - {"waiting"} for s, targets in RUN_TRANSITIONS.items() if s != "waiting"
}

INITIAL_STATUS = "pending"

RUN_CREATED = "run.created"
RUN_STATUS_CHANGED = "run.status_changed"
RUN_DELETED = "run.deleted"
EVENT_TYPES: tuple[str, ...] = (RUN_CREATED, RUN_STATUS_CHANGED, RUN_DELETED)


class IllegalTransition(Exception):
    """A move the lifecycle does not allow."""

    def __init__(self, current: str, requested: str):
        super().__init__(f"cannot change status from {current} to {requested}")
        self.current = current
        self.requested = requested


def normalize_status(value: str, allowed: Iterable[str] = RUN_STATUSES) -> str | None:
    """Lower-case a status given in any letter case; None when unknown."""
    lowered = value.lower() if isinstance(value, str) else None
    return lowered if lowered in allowed else None


def is_legal(current: str, target: str, transitions=RUN_TRANSITIONS) -> bool:
    return target in transitions.get(current, frozenset())


def check_transition(current: str, target: str, transitions=RUN_TRANSITIONS) -> None:
    if not is_legal(current, target, transitions):
        raise IllegalTransition(current, target)


def sources_of(target: str, transitions=RUN_TRANSITIONS) -> list[str]:
    """Every status from which `target` may be reached (the write path's guard)."""
    return sorted(s for s, targets in transitions.items() if target in targets)


def stamps_started(target: str) -> bool:
    """Entering running sets started_at the first time."""
    return target == "running"


def stamps_ended(target: str) -> bool:
    """Entering a terminal status sets ended_at."""
    return target in TERMINAL


def apply(run: dict[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any] | None:
    """Fold one event into a run's state (None = not created yet, or deleted).

    The state has the projection's columns; every timestamp comes from the event.
    """
    kind = event["type"]
    at: datetime = event["occurred_at"]
    if kind == RUN_CREATED:
        data = event.get("data") or {}
        return {
            "id": event["run_id"],
            "enterprise_id": event["enterprise_id"],
            "pipeline_id": event["pipeline_id"],
            "run_number": data["run_number"],
            "status": event["to_status"],
            "status_meta": status_meta(event.get("data")),
            "created_by": event.get("actor_id"),
            "updated_by": event.get("actor_id"),
            "created_at": at,
            "updated_at": at,
            "started_at": None,
            "ended_at": None,
            "version": event["version"],
        }
    if run is None:
        return None
    if kind == RUN_DELETED:
        return None
    if kind == RUN_STATUS_CHANGED:
        target = event["to_status"]
        run = dict(run)
        run["status"] = target
        run["status_meta"] = status_meta(event.get("data"))
        run["updated_by"] = event.get("actor_id")
        run["updated_at"] = at
        if stamps_started(target) and run["started_at"] is None:
            run["started_at"] = at
        if stamps_ended(target):
            run["ended_at"] = at
        run["version"] = event["version"]
        return run
    # Unknown event types leave the run as it was but still count as a version.
    run = dict(run)
    run["version"] = event["version"]
    return run


def status_meta(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's status_meta: the reason of its last status change, if the event had one."""
    reason = (data or {}).get("reason")
    return {"reason": reason} if reason else {}


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    run: dict[str, Any] | None = None
    for event in events:
        run = apply(run, event)
    return run
