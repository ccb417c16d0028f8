"""Pure unit tests of service/lifecycle.py: statuses, transitions, and folding events."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from service.domain import lifecycle as lc
from tests.helpers import (ALLOWED, REFUSED, RUN_MOVES, STAGE_ALLOWED, STAGE_REFUSED,
                           STAGE_RUN_MOVES, STAGE_RUN_STATUSES, STATUSES, _parents, legal_path)

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
def event(kind: str, version: int, to: str | None, minutes: int, run_id=None, **extra) -> dict:
    return {"type": kind, "version": version, "to_status": to, "run_id": run_id or RUN_ID,
            "enterprise_id": "ent", "pipeline_id": PIPELINE_ID, "actor_id": 7,
            "occurred_at": T0 + timedelta(minutes=minutes), **extra}


RUN_ID, PIPELINE_ID = uuid.uuid4(), uuid.uuid4()
CREATED = event(lc.RUN_CREATED, 1, "pending", 0,
                data={"run_number": 3, "timeout_seconds": 600, "stage_runs": []})


def test_statuses_are_in_lifecycle_order():
    assert lc.RUN_STATUSES == ("pending", "queued", "processing", "running", "waiting",
                               "complete", "success", "failure", "cancelled", "timeout", "invalid")
    assert [lc.STATUS_RANK[s] for s in lc.RUN_STATUSES] == list(range(11))
    assert lc.INITIAL_STATUS == "pending"
    assert set(lc.RUN_TRANSITIONS) == set(lc.RUN_STATUSES)


def test_terminal_statuses_have_no_exit_and_every_other_status_reaches_one():
    assert lc.TERMINAL == {"success", "failure", "cancelled", "timeout", "invalid"}
    for status in lc.RUN_STATUSES:
        if status in lc.TERMINAL:
            assert lc.RUN_TRANSITIONS[status] == frozenset()
        else:
            assert lc.RUN_TRANSITIONS[status], status
            assert set(_parents(status)) & lc.TERMINAL, f"{status} can never end"


def test_the_documented_moves():
    assert lc.RUN_TRANSITIONS["complete"] == {"success", "failure"}
    assert {"waiting", "complete"} <= lc.RUN_TRANSITIONS["running"]
    assert "running" in lc.RUN_TRANSITIONS["waiting"]
    assert "waiting" not in lc.RUN_TRANSITIONS["pending"]
    assert not any(s in lc.RUN_TRANSITIONS[s] for s in lc.RUN_STATUSES)  # no self-loops
    assert all("pending" not in targets for targets in lc.RUN_TRANSITIONS.values())


@pytest.mark.parametrize("target", STATUSES[1:])
def test_every_status_is_reachable_from_pending(target):
    path = legal_path(target)
    assert path[-1] == target
    for current, nxt in zip(["pending", *path], path):
        assert lc.is_legal(current, nxt)


@pytest.mark.parametrize("current,target", ALLOWED)
def test_allowed_moves_pass_the_check(current, target):
    assert lc.is_legal(current, target)
    lc.check_transition(current, target)
    assert current in lc.sources_of(target)


@pytest.mark.parametrize("current,target", REFUSED + [(s, s) for s in STATUSES])
def test_refused_moves_raise_naming_both_statuses(current, target):
    assert not lc.is_legal(current, target)
    assert current not in lc.sources_of(target)
    with pytest.raises(lc.IllegalTransition) as info:
        lc.check_transition(current, target)
    assert (info.value.current, info.value.requested) == (current, target)
    assert current in str(info.value) and target in str(info.value)


def test_unknown_statuses_are_never_legal():
    assert not lc.is_legal("bogus", "running")
    assert not lc.is_legal("pending", "bogus")
    assert lc.sources_of("bogus") == []


def test_sources_of_inverts_the_documented_table():
    for target in STATUSES:
        expected = sorted(s for s in STATUSES if target in RUN_MOVES[s])
        assert lc.sources_of(target) == expected


def test_the_code_holds_the_documented_tables_edge_for_edge():
    """lifecycle.py against the literal tables of tests/helpers.py (the API document and
    README): every move the code allows is documented, and every documented move allowed."""
    assert lc.RUN_STATUSES == STATUSES and lc.STAGE_RUN_STATUSES == STAGE_RUN_STATUSES
    assert {s: set(t) for s, t in lc.RUN_TRANSITIONS.items()} == RUN_MOVES
    assert {s: set(t) for s, t in lc.STAGE_RUN_TRANSITIONS.items()} == STAGE_RUN_MOVES
    assert lc.TERMINAL == {s for s, targets in RUN_MOVES.items() if not targets}


@pytest.mark.parametrize("current,target", STAGE_ALLOWED)
def test_allowed_stage_run_moves_pass_the_check(current, target):
    assert lc.is_legal(current, target, lc.STAGE_RUN_TRANSITIONS)
    lc.check_transition(current, target, lc.STAGE_RUN_TRANSITIONS)


@pytest.mark.parametrize("current,target",
                         STAGE_REFUSED + [(s, s) for s in STAGE_RUN_STATUSES]
                         + [(s, "waiting") for s in STAGE_RUN_STATUSES])
def test_refused_stage_run_moves_raise(current, target):
    assert not lc.is_legal(current, target, lc.STAGE_RUN_TRANSITIONS)
    with pytest.raises(lc.IllegalTransition):
        lc.check_transition(current, target, lc.STAGE_RUN_TRANSITIONS)


@pytest.mark.parametrize("given,expected", [
    ("RUNNING", "running"), ("Cancelled", "cancelled"), ("pending", "pending"),
    ("TimeOut", "timeout"), ("bogus", None), ("", None), (" running", None), (None, None),
    (3, None),
])
def test_normalize_status(given, expected):
    assert lc.normalize_status(given) == expected


def test_normalize_status_respects_the_allowed_set():
    assert lc.normalize_status("WAITING", lc.STAGE_RUN_STATUSES) is None
    assert lc.normalize_status("WAITING") == "waiting"


def test_stamps():
    assert [s for s in lc.RUN_STATUSES if lc.stamps_started(s)] == ["running"]
    assert {s for s in lc.RUN_STATUSES if lc.stamps_ended(s)} == lc.TERMINAL


def test_created_event_starts_a_pending_run():
    run = lc.apply(None, CREATED)
    assert run == {
        "id": RUN_ID, "enterprise_id": "ent", "pipeline_id": PIPELINE_ID, "run_number": 3,
        "status": "pending", "status_meta": {}, "created_by": 7, "updated_by": 7,
        "created_at": T0, "updated_at": T0, "started_at": None, "ended_at": None, "version": 1,
        "deadline": T0 + timedelta(seconds=600), "stage_runs": [],
    }


def test_started_at_is_set_once_and_ended_at_on_terminal():
    changes = [("running", 1), ("waiting", 2), ("running", 3), ("complete", 4), ("success", 5)]
    run = lc.apply(None, CREATED)
    for version, (status, minute) in enumerate(changes, start=2):
        run = lc.apply(run, event(lc.RUN_STATUS_CHANGED, version, status, minute,
                                  actor_id=9, data={}))
        assert run["status"] == status and run["version"] == version
        assert run["updated_at"] == T0 + timedelta(minutes=minute) and run["updated_by"] == 9
        assert run["started_at"] == T0 + timedelta(minutes=1)
        assert run["ended_at"] == (T0 + timedelta(minutes=5) if status == "success" else None)
    assert run["created_by"] == 7 and run["created_at"] == T0


def test_status_meta_keeps_the_reason_of_the_last_change():
    run = lc.apply(None, CREATED)
    run = lc.apply(run, event(lc.RUN_STATUS_CHANGED, 2, "timeout", 1, data={"reason": "swept"}))
    assert run["status_meta"] == {"reason": "swept"} and run["ended_at"] is not None
    assert lc.status_meta(None) == {} and lc.status_meta({"request_id": "x"}) == {}


def test_deleted_event_ends_the_run_and_later_events_are_ignored():
    run = lc.apply(None, CREATED)
    assert lc.apply(run, event(lc.RUN_DELETED, 2, None, 1)) is None
    assert lc.apply(None, event(lc.RUN_STATUS_CHANGED, 3, "running", 2)) is None


def test_unknown_event_types_only_bump_the_version():
    run = lc.apply(None, CREATED)
    bumped = lc.apply(run, event("run.annotated", 2, None, 1))
    assert bumped == {**run, "version": 2}
    assert run["version"] == 1  # apply never mutates its input


def test_fold_equals_applying_each_event_in_turn():
    events = [CREATED, event(lc.RUN_STATUS_CHANGED, 2, "running", 1),
              event(lc.RUN_STATUS_CHANGED, 3, "cancelled", 2)]
    run = lc.fold(events)
    assert run["status"] == "cancelled" and run["version"] == 3
    assert run["started_at"] == T0 + timedelta(minutes=1)
    assert run["ended_at"] == T0 + timedelta(minutes=2)
    assert lc.fold([]) is None
    assert lc.fold([*events, event(lc.RUN_DELETED, 4, None, 3)]) is None


def test_apply_leaves_its_input_alone_and_fold_rows_folds_the_same():
    stage = {"id": str(uuid.uuid4()), "stage_id": str(uuid.uuid4()), "ordinal": 1,
             "name": "build", "description": "", "created_by": 7, "timeout_seconds": 60}
    created = {**CREATED, "data": {**CREATED["data"], "stage_runs": [stage]}}
    named = {"stage_run_id": stage["id"]}
    events = [created, event(lc.STAGE_RUN_STATUS_CHANGED, 2, "running", 1, data=named),
              event(lc.RUN_STATUS_CHANGED, 3, "running", 1, data={}),
              event(lc.STAGE_RUN_STATUS_CHANGED, 4, "success", 2, data=named)]
    run = lc.apply(None, created)
    before = {**run, "stage_runs": [dict(s) for s in run["stage_runs"]]}
    moved = lc.apply(run, events[1])
    assert run == before  # neither the run nor its stage runs changed
    assert moved["stage_runs"][0]["status"] == "running" and moved["version"] == 2
    folded = lc.fold(events)
    assert folded == lc.fold_rows(tuple(e.get(f) for f in lc.EVENT_FIELDS) for e in events)
    assert folded["stage_runs"][0]["status"] == "success"
    assert folded["stage_runs"][0]["id"] == uuid.UUID(stage["id"])
    assert folded["stage_runs"][0]["ended_at"] == T0 + timedelta(minutes=2)
