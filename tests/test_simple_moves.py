"""A simple move (one statement, store/moves.py) plans exactly what the general path plans.

The one-statement path writes a status change without asking the lifecycle what follows
from it. That is only right while nothing ever does: these tests walk every run state the
lifecycle can reach and fail the day a rule makes a simple move need a follow-up.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from service.app import changes
from service.app import runs as run_cases
from service.app.context import Actor, OnConnection
from service.domain import lifecycle
from service.store import moves

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _created(stages: int) -> dict:
    data = {"run_number": 1, "timeout_seconds": 60, "stage_runs": [
        {"id": str(uuid.uuid4()), "stage_id": str(uuid.uuid4()), "ordinal": n, "name": f"s{n}",
         "description": "", "created_by": 1, "timeout_seconds": 60} for n in range(stages)]}
    return lifecycle.step(None, lifecycle.RUN_CREATED, 1, lifecycle.INITIAL_STATUS, 1, T0,
                          data, "e", uuid.uuid4(), uuid.uuid4())


def _key(state: dict) -> tuple:
    return (state["status"], state["started_at"] is None, state["ended_at"] is None,
            tuple(s["status"] for s in state["stage_runs"]))


def _reachable(stages: int) -> list[dict]:
    """Every state a run with `stages` stage runs reaches by any legal sequence of moves."""
    start = lifecycle.preview(_created(stages), lifecycle.plan_creation(_created(stages)))
    seen, todo, states = {_key(start)}, [start], [start]
    while todo:
        state = todo.pop()
        nexts = [lifecycle.plan_run_change(state, t) for t in lifecycle.RUN_STATUSES
                 if lifecycle.is_legal(state["status"], t)]
        nexts += [lifecycle.plan_stage_change(state, s["id"], t)
                  for s in state["stage_runs"] for t in lifecycle.STAGE_RUN_STATUSES
                  if lifecycle.is_legal(s["status"], t, lifecycle.STAGE_RUN_TRANSITIONS)]
        for drafts in nexts:
            after = lifecycle.preview(state, drafts)
            if _key(after) not in seen:
                seen.add(_key(after))
                todo.append(after)
                states.append(after)
    return states


@pytest.mark.parametrize("stages", [0, 1, 2, 3])
def test_a_simple_move_never_needs_a_follow_up(stages):
    states = _reachable(stages)
    assert len(states) >= (1 if stages == 0 else 10)  # the walk does reach many states
    checked = 0
    for state in states:
        for target in lifecycle.SIMPLE_RUN_TARGETS:
            legal_in_sql = f"{state['status']}>{target}" in moves.LEGAL_MOVES
            if not lifecycle.is_legal(state["status"], target):
                assert not legal_in_sql
                continue
            assert legal_in_sql
            drafts = lifecycle.plan_run_change(state, target)
            # Exactly the one event the statement appends ...
            assert drafts == [lifecycle.Draft(lifecycle.RUN_STATUS_CHANGED, state["status"],
                                              target)], (state["status"], target)
            # ... and exactly the row it writes (store/moves.py's stamps).
            after = lifecycle.preview(state, drafts)
            assert after["stage_runs"] == state["stage_runs"]
            assert after["started_at"] == (state["started_at"] or (
                after["updated_at"] if target in moves._STARTS else None))
            assert after["ended_at"] == (after["updated_at"] if target in moves._ENDS
                                         else state["ended_at"])
            checked += 1
    assert checked > 0 or stages == 0


def test_the_statement_knows_every_legal_simple_move():
    assert moves.LEGAL_MOVES == sorted(
        f"{s}>{t}" for s in lifecycle.RUN_STATUSES for t in lifecycle.SIMPLE_RUN_TARGETS
        if lifecycle.is_legal(s, t))


SOURCES = {"pending": (), "queued": ("queued",), "processing": ("processing",),
           "running": ("running",), "waiting": ("running", "waiting")}


def _row_shape(run: dict) -> tuple:
    return (run["status"], run["status_meta"], run["version"], run["started_at"] is None,
            run["started_at"] == run["updated_at"], run["ended_at"] is None)


async def _events(db, run_id) -> list[tuple]:
    rows = await db.fetch("SELECT version, type, from_status, to_status, actor, actor_id, "
                          "data - 'request_id' AS data FROM run_events WHERE run_id = $1 "
                          "AND version > 1 ORDER BY version", run_id)  # after run.created
    return [tuple(r) for r in rows]


async def _stage_statuses(db, run_id) -> list[str]:
    return [r["status"] for r in await db.fetch(
        "SELECT status FROM stage_runs WHERE run_id = $1 ORDER BY ordinal", run_id)]


@pytest.mark.parametrize("source", list(SOURCES))
async def test_both_paths_write_the_same_move(api, db, enterprise, source):
    """Twin runs moved alike, one by the statement, one by the general path: same result."""
    pipeline = await api.pipeline(stages=("a", "b"))
    actor = Actor(enterprise, "twin", 9)
    for target in sorted(t for t in lifecycle.SIMPLE_RUN_TARGETS if lifecycle.is_legal(source, t)):
        one, general = [await api.move(await api.run(pipeline["id"]), *SOURCES[source])
                        for _ in range(2)]
        by_statement = await run_cases.change_status(
            OnConnection(db), actor, uuid.UUID(pipeline["id"]), uuid.UUID(one["id"]), target)
        async with db.transaction():
            state, _ = await changes.change(
                db, actor, uuid.UUID(general["id"]), uuid.UUID(pipeline["id"]), None,
                lambda s: lifecycle.plan_run_change(s, target))
        assert _row_shape(by_statement) == _row_shape(state), (source, target)
        assert await _events(db, uuid.UUID(one["id"])) == await _events(
            db, uuid.UUID(general["id"]))
        assert await _stage_statuses(db, uuid.UUID(one["id"])) == await _stage_statuses(
            db, uuid.UUID(general["id"]))
