"""`python -m service seed`: bulk-generate realistic runs with full, legal event histories.

Every run's events are planned by the live path's own lifecycle (lifecycle.plan_*: the same
cascades and derived outcomes a caller would cause) and folded with lifecycle.apply, the
fold replay and verify use; the projection rows written are that fold. So `python -m
service verify` passes afterwards, and the API shows the runs as if they had been made
through it.

What a seeded enterprise looks like:
- P new pipelines (names like `deploy-api-03`): most with 1-5 stages, one in twenty with
  none (its runs are invalid at once); some with a run timeout of a few hours, the rest
  the 21-day default.
- N runs over the last --days days, busier pipelines getting more, run numbers 1..n per
  pipeline in creation order. Mixed lifecycles: success (stages one by one, some queued,
  processing or waiting on the way), failure (a stage fails, the rest are cancelled),
  cancelled by a user, invalid, stalled ones (timed out at their deadline by `system`,
  as the sweeper would, or still open when the deadline is ahead), and those still in
  progress now; about 3% of finished runs are deleted later.
- Event times grow with versions; positions follow time within each batch of runs.

Writes use COPY (copy_records_to_table), one transaction per batch, holding the
enterprise's feed lock like every append, so a live feed reader never sees a gap. Each
batch closes the insights' hours up to its last run's creation (no later batch has a key
before it), so no batch reaches back into the running totals; the rest are closed once,
at the end. The tables are ANALYZEd as they grow (through `analyze`: their owner).
The shape of the data is deterministic for a given --seed (ids are random; times follow
`now`).
"""
from __future__ import annotations

import asyncio
import bisect
import os
import random
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from operator import itemgetter
from typing import Any, Awaitable, Callable

import asyncpg

from service.domain import lifecycle
from service.store import seed as sql
from service.store.columns import RUN_STATE_COLUMNS, STAGE_RUN_COLUMNS

APPS = ("api", "web", "billing", "search", "auth", "mobile", "worker", "gateway", "reports",
        "ingest", "notify", "ledger")
KINDS = ("deploy", "release", "build", "migrate", "rollout")
STAGE_NAMES = ("build", "unit-tests", "integration-tests", "deploy-staging", "approve",
               "deploy-prod", "smoke-tests")
USERS = (("alice", 1001), ("bob", 1002), ("ci-bot", 1003), ("release-bot", 1004),
         ("carol", 1005))

# Scenario weights (a run's intent; time may cut it short: in progress, or timed out).
SCENARIOS = (("success", 64), ("failure", 15), ("cancelled", 8), ("invalid", 2),
             ("stalled", 6), ("waiting", 5))
DELETE_SHARE = 0.03
_PIPELINE = RUN_STATE_COLUMNS.index("pipeline_id")
_RUN_ROW = itemgetter(*RUN_STATE_COLUMNS)
_STAGE_RUN_ROW = itemgetter(*STAGE_RUN_COLUMNS)
_OCCURRED_AT = itemgetter("occurred_at")
# (run status, stage run statuses, action) -> the lifecycle's drafts, stage runs by index.
_PLANS: dict[tuple, list[tuple[lifecycle.Draft, int | None]]] = {}
_STATUS = RUN_STATE_COLUMNS.index("status")


@dataclass
class SeedReport:
    enterprise_id: str
    pipelines: int = 0
    runs: int = 0
    live_runs: int = 0
    events: int = 0
    stage_runs: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else float("inf")


@dataclass
class _Pipeline:
    id: uuid.UUID
    name: str
    timeout_seconds: int | None
    stages: list[dict[str, Any]]  # the snapshot a run.created event carries (stage ids str)
    runs: int = 0
    next_number: int = 0


class _Generator:
    """Plans and folds one run at a time; collects the COPY records of a batch."""

    def __init__(self, enterprise_id: str, rng: random.Random, now: datetime):
        self.enterprise_id = enterprise_id
        self.rng = rng
        # Ids are random even for a fixed --seed (seeding twice must not collide); the
        # shape of the data (pipelines, lifecycles, times) is what the seed fixes.
        self.ids = random.Random(os.urandom(16))
        self.now = now
        self.runs: list[tuple] = []
        self.stage_runs: list[tuple] = []
        self.outcomes: dict[str, int] = {}

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.ids.getrandbits(128), version=4)

    def run(self, pipeline: _Pipeline, number: int, created_at: datetime) -> list[dict]:
        """One run's events, planned and folded; its projection rows are kept if it lives."""
        rng = self.rng
        actor, actor_id = rng.choice(USERS)
        run_id = self.uuid()
        timeout = pipeline.timeout_seconds or lifecycle.DEFAULT_RUN_TIMEOUT_SECONDS
        snapshot = [{**s, "id": str(self.uuid())} for s in pipeline.stages]
        created = {
            "enterprise_id": self.enterprise_id, "pipeline_id": pipeline.id, "run_id": run_id,
            "version": 1, "type": lifecycle.RUN_CREATED, "from_status": None,
            "to_status": lifecycle.INITIAL_STATUS, "actor": actor, "actor_id": actor_id,
            "occurred_at": created_at,
            "data": {"run_number": number, "timeout_seconds": timeout, "stage_runs": snapshot},
        }
        history = _History(self, created, actor, actor_id)
        if not snapshot:
            history.planned(("creation",), lambda: lifecycle.plan_creation(history.state))
        else:
            _play(history, rng.choices(*zip(*SCENARIOS))[0])
            history.settle()
        state = history.state
        if (state is not None and state["status"] in lifecycle.TERMINAL
                and rng.random() < DELETE_SHARE and history.advance(rng.randint(600, 86400))):
            history.delete()
            state = None
        outcome = "deleted" if state is None else state["status"]
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if state is not None:
            self.runs.append(_RUN_ROW(state))
            self.stage_runs.extend(map(_STAGE_RUN_ROW, state["stage_runs"]))
        return history.events

    def take(self) -> tuple[list[tuple], list[tuple]]:
        """The projection rows of the runs made since the last take."""
        batch = self.runs, self.stage_runs
        self.runs, self.stage_runs = [], []
        return batch


class _History:
    """A run's events so far, its folded state and its clock."""

    def __init__(self, gen: _Generator, created: dict, actor: str, actor_id: int):
        self.gen = gen
        self.events = [created]
        self.state = lifecycle.apply(None, created)
        self.at = created["occurred_at"]
        self.deadline = self.state["deadline"]
        self.actor, self.actor_id = actor, actor_id
        self.stage_ids = [s["id"] for s in created["data"]["stage_runs"]]  # as events name them
        self.open = True  # False once time ran out (now reached, or timed out)

    def advance(self, seconds: float) -> bool:
        """Move the clock; what outlives its timeout times out on the way, as the sweeper
        would time it out: a running stage run past its own timeout, an open run at its
        deadline. False when the run's time is up (now reached, or timed out)."""
        if not self.open:
            return False
        at = self.at + timedelta(seconds=seconds)
        while True:
            stage, expiry = self._next_stage_expiry()
            if stage is None or expiry > at or expiry >= self.gen.now or expiry >= self.deadline:
                break
            self.at = expiry
            self.stage_to(stage, "timeout", lifecycle.TIMEOUT_REASON, system=True)
        if at >= self.deadline and self.state["status"] in lifecycle.OPEN_RUN_STATUSES:
            if self.deadline < self.gen.now:
                self.at = self.deadline
                self.run_to("timeout", lifecycle.TIMEOUT_REASON, system=True)
            self.open = False
            return False
        if at >= self.gen.now:
            self.open = False
            return False
        self.at = at
        return True

    def _next_stage_expiry(self) -> tuple[int | None, datetime]:
        running = [(s["started_at"] + timedelta(seconds=s["timeout_seconds"]), n)
                   for n, s in enumerate(self.state["stage_runs"]) if s["status"] == "running"]
        if not running:
            return None, self.at
        expiry, n = min(running)
        return n, expiry

    def settle(self) -> None:
        """Let time run out for a run left open: what expires before now times out."""
        if self.state is not None and self.state["status"] not in lifecycle.TERMINAL:
            self.advance(100 * 365 * 86400)

    def planned(self, action: tuple, plan: Callable[[], list[lifecycle.Draft]]) -> None:
        """act(plan()), with the lifecycle's plan looked up by the run's shape when known.

        A plan depends on the statuses of the run and its stage runs only (and names stage
        runs by id): planned once per shape and action, by the lifecycle itself, then
        re-aimed at this run's stage run ids. The fold (act) still runs per event.
        """
        key = (self.state["status"], tuple(s["status"] for s in self.state["stage_runs"]),
               action)
        shape = _PLANS.get(key)
        if shape is None:
            index = {sid: n for n, sid in enumerate(self.stage_ids)}
            shape = _PLANS[key] = [(d, index.get(d.data.get("stage_run_id"))) for d in plan()]
        self.act(shape)

    def act(self, shape: list[tuple[lifecycle.Draft, int | None]]) -> None:
        """Append the drafts as one change would (one time, versions in order), and fold.

        shape: (draft, index of the stage run it moves or None); the drafts' stage run ids
        are replaced by this run's own."""
        state, version = self.state, self.state["version"]
        for n, (draft, stage) in enumerate(shape, start=1):
            data = dict(draft.data)
            if stage is not None:
                data["stage_run_id"] = self.stage_ids[stage]
            event = {
                "enterprise_id": state["enterprise_id"], "pipeline_id": state["pipeline_id"],
                "run_id": state["id"], "version": version + n, "type": draft.type,
                "from_status": draft.from_status, "to_status": draft.to_status,
                "actor": lifecycle.SYSTEM if draft.system else self.actor,
                "actor_id": None if draft.system else self.actor_id,
                "occurred_at": self.at, "data": data,
            }
            state = lifecycle.apply(state, event)
            self.events.append(event)
        self.state = state

    def run_to(self, target: str, reason: str | None = None, system: bool = False) -> None:
        state = self.state
        if state["status"] != target and lifecycle.is_legal(state["status"], target):
            self.planned(("run", target, reason, system), lambda: lifecycle.plan_run_change(
                state, target, system=system, reason=reason))

    def stage_to(self, index: int, target: str, reason: str | None = None,
                 system: bool = False) -> None:
        state = self.state
        stage = state["stage_runs"][index]
        if lifecycle.is_legal(stage["status"], target, lifecycle.STAGE_RUN_TRANSITIONS):
            self.planned(("stage", index, target, reason, system),
                         lambda: lifecycle.plan_stage_change(state, str(stage["id"]), target,
                                                             system=system, reason=reason))

    def delete(self) -> None:
        state = self.state
        event = {
            "enterprise_id": state["enterprise_id"], "pipeline_id": state["pipeline_id"],
            "run_id": state["id"], "version": state["version"] + 1,
            "type": lifecycle.RUN_DELETED, "from_status": state["status"], "to_status": None,
            "actor": self.actor, "actor_id": self.actor_id, "occurred_at": self.at, "data": {},
        }
        self.events.append(event)
        self.state = lifecycle.apply(state, event)


def _play(h: _History, scenario: str) -> None:
    """Drive a run with stages through a scenario, as long as time allows."""
    rng = h.gen.rng
    stages = len(h.state["stage_runs"])
    if rng.random() < 0.5 and h.advance(rng.uniform(1, 120)):
        h.run_to("queued")
    if rng.random() < 0.3 and h.advance(rng.uniform(1, 60)):
        h.run_to("processing")
    if scenario == "invalid":
        if h.advance(rng.uniform(5, 300)):
            h.run_to("invalid", reason="rejected by policy")
        return
    # The stage that fails, the one after which a user cancels, or the one the run stalls in.
    stop_at = rng.randrange(stages)
    for i in range(stages):
        if not h.advance(rng.uniform(5, 300)):
            return
        h.stage_to(i, "running")
        if scenario == "waiting" and i == stop_at and h.advance(rng.uniform(5, 120)):
            h.run_to("waiting", reason="waiting for approval")
            if rng.random() < 0.8 and h.advance(rng.uniform(60, 3600)):
                h.run_to("running")
            else:
                return  # still waiting (or timed out waiting)
        if scenario == "stalled" and i == stop_at:
            return  # nothing more happens: settle() times it out, if it is due by now
        if not h.advance(rng.uniform(30, 1800)):
            return
        if scenario == "cancelled" and i == stop_at:
            h.run_to("cancelled", reason="cancelled by user")
            return
        h.stage_to(i, "complete")  # a stage run finishes: complete, then its outcome
        if not h.advance(rng.uniform(1, 30)):
            return
        if scenario == "failure" and i == stop_at:
            h.stage_to(i, "failure")
            for rest in range(i + 1, stages):  # the run completes as failure after the last
                h.stage_to(rest, "cancelled")
            return
        h.stage_to(i, "success")  # after the last one the run completes: success


def _pipelines(enterprise_id: str, count: int, rng: random.Random, created_at: datetime,
               new_id: Callable[[], uuid.UUID]) -> list[_Pipeline]:
    pipelines = []
    for i in range(count):
        name = f"{KINDS[i % len(KINDS)]}-{APPS[(i // len(KINDS)) % len(APPS)]}-{i:02d}"
        n_stages = 0 if i % 20 == 19 else rng.randint(1, 5)
        names = sorted(rng.sample(range(len(STAGE_NAMES)), n_stages))
        actor_id = rng.choice(USERS)[1]
        stages = [{
            "stage_id": str(new_id()), "ordinal": ordinal, "name": STAGE_NAMES[k],
            "description": f"{STAGE_NAMES[k]} for {name}", "created_by": actor_id,
            "timeout_seconds": lifecycle.DEFAULT_STAGE_TIMEOUT_SECONDS,
        } for ordinal, k in enumerate(names, start=1)]
        timeout = rng.choice((3600, 2 * 3600, 6 * 3600)) if rng.random() < 0.4 else None
        pipelines.append(_Pipeline(new_id(), name, timeout, stages))
    return pipelines


async def analyze_loaded(conn: asyncpg.Connection) -> None:
    """ANALYZE the tables a seed loads (conn: their owner's)."""
    await sql.analyze_loaded(conn)


async def seed(conn: asyncpg.Connection, enterprise_id: str, pipelines: int, runs: int, *,
               days: float = 90.0, seed: int = 0, batch: int = 5000,
               now: datetime | None = None,
               progress: Callable[[SeedReport], None] | None = None,
               analyze: Callable[[], Awaitable[None]] | None = None) -> SeedReport:
    """Create `pipelines` pipelines and `runs` runs in the enterprise (conn: init_connection'd).
    `analyze`: ANALYZE the loaded tables as they grow (default: on conn, which must own them:
    PostgreSQL skips the tables of another owner, with a warning)."""
    if pipelines < 1 or runs < 0:
        raise ValueError("seed needs at least one pipeline and a non-negative run count")
    started = time.perf_counter()
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    first = now - timedelta(days=days)
    gen = _Generator(enterprise_id, rng, now)
    report = SeedReport(enterprise_id)

    # Which pipeline each run belongs to, decided up front so every pipeline's
    # last_run_number is known when it is inserted. Busier pipelines come first (Zipf-ish).
    plan = _pipelines(enterprise_id, pipelines, rng, first - timedelta(days=1), gen.uuid)
    weights = list(accumulate(1 / (k + 1) for k in range(pipelines)))
    owners = bytearray() if pipelines <= 256 else []
    for _ in range(runs):
        k = bisect.bisect_left(weights, rng.random() * weights[-1])
        owners.append(min(k, pipelines - 1))
        plan[owners[-1]].runs += 1
    made_at = first - timedelta(days=1)
    async with conn.transaction():
        await sql.insert_pipelines(
            conn,
            [(enterprise_id, p.id, p.name, f"{p.name}: seeded", p.timeout_seconds, p.runs,
              len(p.stages), USERS[0][1], made_at) for p in plan],
            [(enterprise_id, uuid.UUID(s["stage_id"]), p.id, s["name"], s["description"],
              None, s["ordinal"], s["created_by"], made_at) for p in plan for s in p.stages])
    # The snapshot records the stage timeout in force (the default: stages have none).
    report.pipelines = pipelines

    await sql.ensure_partitions(conn, first, now)
    span = (now - first).total_seconds()
    event_tuple = itemgetter(*sql.EVENT_COLUMNS)

    def make(start: int):
        """One batch's COPY records (CPU only: runs in a thread while the last one is copied)."""
        ordered: list[list[dict]] = []
        created_at = first
        for i in range(start, min(start + batch, runs)):
            pipeline = plan[owners[i]]
            pipeline.next_number += 1
            # grows with i: a later batch's runs are all created after this one's
            created_at = first + timedelta(seconds=span * (i + rng.random()) / runs)
            ordered.append(gen.run(pipeline, pipeline.next_number, created_at))
        # Positions follow time within the batch; a run's events keep their version order
        # (the sort is stable and the list starts in run order, then version order).
        merged = [e for history in ordered for e in history]
        merged.sort(key=_OCCURRED_AT)
        events = list(map(event_tuple, merged))
        run_rows, stage_rows = gen.take()
        run_counts = Counter((enterprise_id, r[_PIPELINE], r[_STATUS]) for r in run_rows)
        return len(ordered), events, run_rows, stage_rows, run_counts, created_at

    loop = asyncio.get_running_loop()
    async with sql.fast_jsonb(conn):
        await _batches(conn, make, loop, runs, batch, report, started, progress,
                       analyze or (lambda: analyze_loaded(conn)))
    await sql.close_hours(conn, enterprise_id)
    report.outcomes = dict(sorted(gen.outcomes.items(), key=lambda kv: -kv[1]))
    report.seconds = time.perf_counter() - started
    return report


async def _batches(conn, make, loop, runs: int, batch: int, report: SeedReport,
                   started: float, progress, analyze) -> None:
    """COPY batch after batch, making the next one meanwhile."""
    enterprise_id = report.enterprise_id
    analyzed = 0  # runs loaded when the tables were last analyzed
    with ThreadPoolExecutor(1, thread_name_prefix="seed") as pool:
        ready = make(0) if runs else None
        for start in range(0, runs, batch):
            made, events, run_rows, stage_rows, run_counts, last_created = ready
            following = (loop.run_in_executor(pool, make, start + batch)
                         if start + batch < runs else None)
            try:
                await sql.copy_batch(conn, enterprise_id, events, run_rows, stage_rows,
                                     run_counts, closes=last_created)
            finally:
                ready = await following if following is not None else None
            report.runs += made
            if report.runs >= 2 * analyzed and start + batch < runs:
                # Each time the load has doubled (8 times for 1M runs in batches of
                # 5,000): the next batches' plans see the tables as they are.
                await analyze()
                analyzed = report.runs
            report.live_runs += len(run_rows)
            report.events += len(events)
            report.stage_runs += len(stage_rows)
            report.seconds = time.perf_counter() - started
            if progress is not None:
                progress(report)
