"""The timeline's intervals and as_of views (service/domain/timeline.py), pure."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from service.domain import timeline

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
RUN, STAGE_A, STAGE_B = uuid.uuid4(), str(uuid.uuid4()), str(uuid.uuid4())


def event(version: int, kind: str, to: str | None, minutes: float, **data) -> dict:
    return {"type": kind, "version": version, "to_status": to, "from_status": None,
            "actor": "alice", "actor_id": None, "occurred_at": T0 + timedelta(minutes=minutes),
            "data": data, "enterprise_id": "e", "run_id": RUN, "pipeline_id": uuid.uuid4()}


def history() -> list[dict]:
    stages = [{"id": sid, "stage_id": str(uuid.uuid4()), "ordinal": n, "name": name,
               "description": "", "created_by": None, "timeout_seconds": 60}
              for n, (sid, name) in enumerate(((STAGE_A, "build"), (STAGE_B, "test")))]
    return [
        event(1, "run.created", "pending", 0, run_number=7, timeout_seconds=3600,
              stage_runs=stages),
        event(2, "stage_run.status_changed", "running", 1, stage_run_id=STAGE_A),
        event(3, "run.status_changed", "running", 1),
        event(4, "stage_run.status_changed", "complete", 5, stage_run_id=STAGE_A),
        event(5, "run.status_changed", "cancelled", 6, reason="operator said so"),
        event(6, "run.deleted", None, 8),
    ]


def intervals(view) -> dict[str, list[tuple[str, float, float]]]:
    def minutes(at):
        return (at - T0) / timedelta(minutes=1)
    return {lane.label: [(s.status, minutes(s.start), minutes(s.end)) for s in lane.segments]
            for lane in view.lanes}


def test_intervals_per_lane_until_the_instant_viewed():
    view = timeline.view(history(), T0 + timedelta(minutes=3), T0 + timedelta(hours=1))
    assert view.deleted is None and view.state["status"] == "running"
    assert intervals(view) == {
        "Run #7": [("pending", 0, 1), ("running", 1, 3)],
        "build": [("pending", 0, 1), ("running", 1, 3)],
        "test": [("pending", 0, 3)],
    }
    assert [len(lane.markers) for lane in view.lanes] == [2, 1, 0]  # created, moved; moved


def test_a_deleted_run_is_its_state_before_deletion_and_ends_after_its_last_event():
    view = timeline.view(history(), None, T0 + timedelta(days=3))
    assert view.deleted["version"] == 6 and view.state["status"] == "cancelled"
    assert view.state["status_meta"] == {"reason": "operator said so"}
    run_lane = intervals(view)["Run #7"]
    assert run_lane[-1][0] == "cancelled" and 8 < run_lane[-1][2] < 9  # not "now", days later
    assert len(view.lanes[0].markers) == 4  # created, running, cancelled, deleted


def test_before_creation_there_is_no_run():
    assert timeline.view(history(), T0 - timedelta(seconds=1), T0) is None
