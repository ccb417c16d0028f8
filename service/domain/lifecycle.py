"""The run lifecycle, pure: statuses, legal moves, automatic moves, and how events fold.

The live write path and replay/as_of both use this module, so they cannot drift: writes
ask `plan_*` which events a change produces (cascades and derived outcomes included) and
`apply` what those events make of the run; replay folds the stored events with `fold_rows`.
All three are `step`, the one place an event's effect is written down.
"""
from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Mapping

# Lifecycle order: also the sort order of `ordering=status`.
RUN_STATUSES: tuple[str, ...] = (
    "pending", "queued", "processing", "running", "waiting",
    "complete", "success", "failure", "cancelled", "timeout", "invalid",
)
STAGE_RUN_STATUSES: tuple[str, ...] = tuple(s for s in RUN_STATUSES if s != "waiting")
TERMINAL: frozenset[str] = frozenset({"success", "failure", "cancelled", "timeout", "invalid"})
# Not complete and not terminal: what the timeout sweeper looks at.
OPEN_RUN_STATUSES: tuple[str, ...] = ("pending", "queued", "processing", "running", "waiting")
STATUS_RANK: dict[str, int] = {s: i for i, s in enumerate(RUN_STATUSES)}
INITIAL_STATUS = "pending"

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
# Moves a caller's change needs no help for: no cascade, no derived outcome. The write
# path does these in one statement; every other move goes through plan_run_change.
SIMPLE_RUN_TARGETS: frozenset[str] = frozenset({"queued", "processing", "running", "waiting"})

DEFAULT_RUN_TIMEOUT_SECONDS = 21 * 24 * 3600  # the seed's default: 21 days
DEFAULT_STAGE_TIMEOUT_SECONDS = 7 * 24 * 3600

RUN_CREATED = "run.created"
RUN_STATUS_CHANGED = "run.status_changed"
RUN_DELETED = "run.deleted"
STAGE_RUN_STATUS_CHANGED = "stage_run.status_changed"
# Events whose from/to statuses are the run's own (a stage run's event carries the stage
# run's): what moves the run_counts counters (store/append.py).
RUN_EVENT_TYPES: tuple[str, ...] = (RUN_CREATED, RUN_STATUS_CHANGED, RUN_DELETED)
SYSTEM = "system"
NO_STAGES_REASON = "pipeline has no stages"
TIMEOUT_REASON = "timed out"


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


def status_meta(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's status_meta: the reason of its last status change, if the event had one."""
    reason = (data or {}).get("reason")
    return {"reason": reason} if reason else {}


# --- planning: which events a change produces --------------------------------------------

@dataclass(frozen=True)
class Draft:
    """An event to append, before it has a version, a position or a time."""

    type: str
    from_status: str | None
    to_status: str | None
    system: bool = False  # appended by the service itself (actor `system`)
    data: dict[str, Any] = field(default_factory=dict)


def _run_move(run: Mapping, target: str, *, system: bool, reason: str | None = None) -> Draft:
    return Draft(RUN_STATUS_CHANGED, run["status"], target, system,
                 {"reason": reason} if reason else {})


def _stage_move(stage_run: Mapping, target: str, *, system: bool,
                reason: str | None = None) -> Draft:
    data: dict[str, Any] = {"stage_run_id": str(stage_run["id"])}
    if reason:
        data["reason"] = reason
    return Draft(STAGE_RUN_STATUS_CHANGED, stage_run["status"], target, system, data)


def plan_run_change(run: Mapping, target: str, *, system: bool = False,
                    reason: str | None = None) -> list[Draft]:
    """A run's move, then what follows from it. Raises IllegalTransition."""
    check_transition(run["status"], target)
    return _then_follow(run, [_run_move(run, target, system=system, reason=reason)])


def plan_stage_change(run: Mapping, stage_run_id: str, target: str, *,
                      system: bool = False, reason: str | None = None) -> list[Draft]:
    """A stage run's move, then what follows for its run. Raises IllegalTransition/KeyError."""
    stage_run = next(s for s in run["stage_runs"] if str(s["id"]) == str(stage_run_id))
    check_transition(stage_run["status"], target, STAGE_RUN_TRANSITIONS)
    return _then_follow(run, [_stage_move(stage_run, target, system=system, reason=reason)])


def plan_creation(run: Mapping) -> list[Draft]:
    """What follows a run's creation: a pipeline without stages makes it invalid at once."""
    if run["stage_runs"]:
        return []
    return [_run_move(run, "invalid", system=True, reason=NO_STAGES_REASON)]


def _then_follow(run: Mapping, drafts: list[Draft]) -> list[Draft]:
    """Append the automatic moves (cascades, derived outcomes) until none is left."""
    state = preview(run, drafts)
    while True:
        more = _automatic(state)
        if not more:
            return drafts
        drafts = drafts + more
        state = preview(state, more)


def _automatic(run: Mapping) -> list[Draft]:
    stages = run["stage_runs"]
    status = run["status"]
    if status in TERMINAL:
        # A finished run leaves no stage run open: cancel (or time out) what can be.
        target = status if status in ("timeout", "invalid") else "cancelled"
        return [_stage_move(s, target, system=True) for s in stages
                if is_legal(s["status"], target, STAGE_RUN_TRANSITIONS)]
    if not stages:
        return []
    if all(s["status"] in TERMINAL for s in stages):
        # Every stage run is processed: complete, then success only if all succeeded. A run
        # still pending/queued/processing first moves to running, along the legal path.
        if status == "complete":
            outcome = "success" if all(s["status"] == "success" for s in stages) else "failure"
            return [_run_move(run, outcome, system=True)]
        step = "complete" if status in ("running", "waiting") else "running"
        return [_run_move(run, step, system=True)]
    if status in ("pending", "queued", "processing") and any(
            s["status"] == "running" for s in stages):
        return [_run_move(run, "running", system=True)]  # a stage started, so has the run
    return []


def preview(run: Mapping, drafts: Iterable[Draft]) -> dict[str, Any]:
    """The run after the drafts, folded with the same `apply` as stored events."""
    state = dict(run)
    at, version = state["updated_at"], state["version"]
    for draft in drafts:
        version += 1
        state = apply(state, {"type": draft.type, "from_status": draft.from_status,
                              "to_status": draft.to_status, "data": draft.data,
                              "occurred_at": at, "version": version, "actor_id": None})
    return state


# --- folding: what an event makes of a run -------------------------------------------------

# An event's fields as `step` takes them, in this order (fold_rows' tuples too).
EVENT_FIELDS: tuple[str, ...] = ("type", "version", "to_status", "actor_id", "occurred_at",
                                 "data", "enterprise_id", "run_id", "pipeline_id")


def apply(run: Mapping[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any] | None:
    """Fold one event into a run's state (None = not created yet, or deleted).

    The state has the projection's columns, plus `stage_runs` (the stage_runs rows in
    stage order); every timestamp comes from the event. `run` itself is left unchanged.
    """
    if run is not None:  # step changes the dict and list it gets, never a stage run's dict
        run = {**run, "stage_runs": list(run["stage_runs"])}
    return step(run, *(event.get(f) for f in EVENT_FIELDS))


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    return fold_rows(tuple(e.get(f) for f in EVENT_FIELDS) for e in events)


def fold_rows(rows: Iterable[tuple]) -> dict[str, Any] | None:
    """fold() of events given as tuples of EVENT_FIELDS (replay folds millions of these)."""
    run = None
    for row in rows:
        run = step(run, *row)  # in place: the state is the fold's own
    return run


def step(run: dict[str, Any] | None, kind: str, version: int, to_status: str | None,
         actor_id: int | None, at, data: Mapping[str, Any] | None, enterprise_id: str,
         run_id, pipeline_id) -> dict[str, Any] | None:
    """apply(), changing `run` (its dict and stage_runs list) in place: the one fold."""
    if kind == RUN_CREATED:
        return _created(data or {}, at, actor_id, version, to_status, enterprise_id, run_id,
                        pipeline_id)
    if run is None or kind == RUN_DELETED:
        return None
    run["version"] = version
    if kind == RUN_STATUS_CHANGED:
        _moved(run, to_status, actor_id, at)
        run["status_meta"] = status_meta(data)
    elif kind == STAGE_RUN_STATUS_CHANGED:
        stage_runs = run["stage_runs"]
        for n in _named_stage_runs(stage_runs, (data or {}).get("stage_run_id")):
            stage_runs[n] = stage_run = dict(stage_runs[n])
            _moved(stage_run, to_status, actor_id, at)
    return run


def _named_stage_runs(stage_runs: list, wanted: Any) -> list[int]:
    """Which stage runs an event names: those whose id's str() equals the event's text.

    Replay and the seeder fold millions of these: UUID ids are compared as numbers (a stage
    run's events name it a few times, so the parse is cached) instead of formatting every
    stage run's id for every event.
    """
    parsed = _canonical_uuid(wanted) if isinstance(wanted, str) else None
    if parsed is None:  # not a UUID's canonical text: compare as text
        return [n for n, s in enumerate(stage_runs) if str(s["id"]) == wanted]
    number = parsed.int
    return [n for n, s in enumerate(stage_runs)
            if (s["id"].int == number if type(s["id"]) is uuid.UUID else str(s["id"]) == wanted)]


@functools.lru_cache(maxsize=4096)
def _canonical_uuid(text: str) -> uuid.UUID | None:
    try:
        parsed = _parsed_uuid(text)
    except ValueError:
        return None
    return parsed if str(parsed) == text else None


# Stage ids repeat in every run of a pipeline, and a stage run's id is parsed again when
# its first event names it: both hit this cache.
_parsed_uuid = functools.lru_cache(maxsize=4096)(uuid.UUID)


def _uuid(value):
    return value if isinstance(value, uuid.UUID) else _parsed_uuid(str(value))


def _fresh(actor_id, at) -> dict[str, Any]:
    """The stamps of a run or stage run just created: by its creator, never started."""
    return {"created_by": actor_id, "updated_by": actor_id, "created_at": at,
            "updated_at": at, "started_at": None, "ended_at": None}


def _created(data: Mapping[str, Any], at, actor_id, version, to_status, enterprise_id,
             run_id, pipeline_id) -> dict[str, Any]:
    stage_runs = [{
        "enterprise_id": enterprise_id,
        "id": _uuid(s["id"]),
        "run_id": run_id,
        "pipeline_id": pipeline_id,
        "stage_id": _uuid(s["stage_id"]),
        "ordinal": s["ordinal"],
        "stage_meta": {"name": s["name"], "description": s["description"],
                       "created_by": s["created_by"]},
        "timeout_seconds": s["timeout_seconds"],
        "status": INITIAL_STATUS,
        **_fresh(actor_id, at),
    } for s in data.get("stage_runs", ())]
    return {
        "id": run_id,
        "enterprise_id": enterprise_id,
        "pipeline_id": pipeline_id,
        "run_number": data["run_number"],
        "status": to_status,
        "status_meta": status_meta(data),
        **_fresh(actor_id, at),
        "version": version,
        "deadline": at + timedelta(seconds=data["timeout_seconds"]),
        "stage_runs": stage_runs,
    }


def _moved(item: dict[str, Any], target: str, actor_id, at) -> None:
    """A status change of a run or a stage run: the same stamps for both."""
    item["status"] = target
    item["updated_by"] = actor_id
    item["updated_at"] = at
    if stamps_started(target) and item["started_at"] is None:
        item["started_at"] = at
    if stamps_ended(target):
        item["ended_at"] = at
