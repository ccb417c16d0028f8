"""Status changes through the API: every allowed and refused move, stamps, and their events."""
from __future__ import annotations

import pytest

from service.domain import lifecycle as lc
from tests.helpers import (ALLOWED, REFUSED, assert_projection, events_of, run_in, run_level,
                           run_path, token_id, ts)
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _state(api, db, status: str) -> tuple[dict, list[dict]]:
    """A run brought to `status`, and its events so far."""
    run = await run_in(api, await api.pipeline(), status)
    assert run["status"] == status
    return run, await events_of(db, run["id"])


@pytest.mark.parametrize("current,target", ALLOWED)
async def test_allowed_move(api, db, token, current, target):
    run, before = await _state(api, db, current)
    moved = await api.put(run_path(run), {"status": target})
    assert moved["status"] == target and moved["version"] > run["version"]
    assert moved["updated_by"] == await token_id(db, token)
    assert ts(moved["updated_at"]) > ts(run["updated_at"])
    assert await api.get(run_path(run)) == moved
    events = await assert_projection(db, moved)
    new = events[len(before):]
    assert events[:len(before)] == before  # history is never rewritten
    assert len(run_level(new)) == 1 and new[0] == run_level(new)[0]
    event = new[0]
    assert (event["type"], event["from_status"], event["to_status"]) == (
        "run.status_changed", current, target)
    assert (event["version"], event["actor"], event["actor_id"]) == (
        run["version"] + 1, "tester", moved["updated_by"])
    assert ts(moved["updated_at"]) == event["occurred_at"]
    if target == "running" and run["started_at"] is None:
        assert ts(moved["started_at"]) == event["occurred_at"]
    else:
        assert moved["started_at"] == run["started_at"]
    if target in lc.TERMINAL:
        assert ts(moved["ended_at"]) == event["occurred_at"]
    else:
        assert moved["ended_at"] is None


@pytest.mark.parametrize("current,target", REFUSED)
async def test_refused_move_is_409_naming_both_statuses(api, db, current, target):
    run, before = await _state(api, db, current)
    content = await api.put(run_path(run), {"status": target}, status=409)
    assert content == {"current_status": current, "requested_status": target}
    message = (await api.last.json())["message"]
    assert current in message and target in message
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == before


@pytest.mark.parametrize("status", lc.RUN_STATUSES)
async def test_same_status_again_is_200_without_an_event(api, db, status):
    run, before = await _state(api, db, status)
    again = await api.put(run_path(run), {"status": status.upper()})
    assert again == run and again["version"] == run["version"]
    assert api.last.headers["ETag"] == f'"{run["version"]}"'
    assert await events_of(db, run["id"]) == before


@pytest.mark.parametrize("terminal", sorted(lc.TERMINAL))
async def test_terminal_statuses_never_change(api, db, terminal):
    run, before = await _state(api, db, terminal)
    for target in lc.RUN_STATUSES:
        await api.put(run_path(run), {"status": target}, status=200 if target == terminal else 409)
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == before


async def test_started_at_is_set_once_and_ended_at_on_the_terminal_move(api, db):
    run = await api.run((await api.pipeline())["id"])
    queued = await api.move(run, "queued")
    assert queued["started_at"] is None and queued["ended_at"] is None
    running = await api.move(run, "running")
    started = running["started_at"]
    assert started is not None and started == running["updated_at"]
    for status in ("waiting", "running", "waiting", "running", "complete"):
        moved = await api.move(run, status)
        assert moved["started_at"] == started and moved["ended_at"] is None, status
    done = await api.move(run, "failure")
    assert done["started_at"] == started and done["ended_at"] == done["updated_at"]
    assert ts(done["ended_at"]) > ts(started)
    events = run_level(await assert_projection(db, done))
    assert [e["to_status"] for e in events] == [
        "pending", "queued", "running", "waiting", "running", "waiting", "running", "complete",
        "failure"]
    assert ts(started) == events[2]["occurred_at"]


async def test_ending_without_running_leaves_started_at_null(api):
    run = await api.run((await api.pipeline())["id"])
    timed_out = await api.move(run, "timeout")
    assert timed_out["started_at"] is None and timed_out["ended_at"] == timed_out["updated_at"]


@pytest.mark.parametrize("given", ["RUNNING", "Running", "rUnNiNg"])
async def test_status_in_any_letter_case(api, db, given):
    run = await api.run((await api.pipeline())["id"])
    moved = await api.put(run_path(run), {"status": given})
    assert moved["status"] == "running"
    assert run_level(await events_of(db, run["id"]))[-1]["to_status"] == "running"


@pytest.mark.parametrize("body", [{}, {"status": "bogus"}, {"status": None}, {"status": 3},
                                  {"status": ""}, {"state": "running"}, {"status": ["running"]}])
async def test_invalid_status_body_is_400_without_an_event(api, db, body):
    run = await api.run((await api.pipeline())["id"])
    content = await api.put(run_path(run), body, status=400)
    assert "status" in content["errors"]
    assert await api.get(run_path(run)) == run
    assert len(await events_of(db, run["id"])) == 1

