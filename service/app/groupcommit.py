"""Group commit: concurrent status changes share one statement and commit, several in flight.

Why: every append holds its enterprise's feed lock until commit (store/events.py: that is
what makes the feed gap-safe), and a commit waits for its WAL flush. So one enterprise's
writes commit one at a time, one flush each: its write rate is capped near 1 / (round
trip + flush), however many connections write. And every statement costs PostgreSQL its
executor start-up (the status change is one statement of a dozen steps), whatever it
carries. Here, the simple status changes (lifecycle.SIMPLE_RUN_TARGETS: no cascade) that
arrive while a change of the same lane is in flight are queued, and then sent together as
ONE statement (store/moves.py, via app/runs.py): one round trip, one start-up, one flush
for all of them.

Lanes: an enterprise's changes always go to the same lane (a hash of its id); there are
`lanes` of them (a quarter of the pool), so several statements run at once while each
still carries many changes when many enterprises write. (One queue per enterprise made
groups of one change with 100 enterprises: a third of the reference's rate. One queue for
all would leave the pool idle.) A statement of several enterprises takes their feed locks
in one fixed order (store/locks.py FEED_LOCKS), and two lanes never share an enterprise.

Depth: a lane has up to `depth` groups (DEPTH) in flight at once, each on a connection of
its slot. With one group at a time, one busy enterprise's load became one group (32
connections: groups of 26-31 changes, docs/performance.md), so the service's Python and
PostgreSQL took turns: while the statement ran, nearly every request waited in it and
Python idled; while the answers were written, the next requests read and the position
read, the database idled (quiet machine: ~1 of 2 cores busy). Now group B's row locks and runs UPDATE run while group A appends and commits; B then waits
for the feed lock A holds (taken late, right before positions: store/append.py), so the
appends of one enterprise still commit one after another, in position order, and the feed
stays gap-free. Nothing can deadlock: groups in flight never share a run (below), and each
takes its row locks before its feed locks, those in one fixed order. A group costs the
database nearly a statement's worth whatever it carries (~0.6 ms of executor start-up,
commit and chain head: docs/performance.md), so a second group goes out beside one in
flight only once as many changes wait as the one in flight carries (GroupCommit._may_start):
the lane then alternates two halves of its load instead of one large group and one of a
few changes. And only while other lanes are idle (all lanes' slots fewer than
max(lanes, depth)): when many enterprises write, every lane is busy and keeps to one
statement at a time, so their groups stay as large as before; one busy enterprise's lane
takes the idle lanes' share.

Nothing a single change guarantees is lost:
- A group runs the very statement a change alone runs, with the same checks per change;
  each change is checked against its run's current (locked) state.
- A group holds at most one change per run, and no change of a run that has one in a
  group in flight: that change waits for a later group, sent once the earlier one has
  committed, so two changes of one run behave as two requests one after the other. Groups
  take the queued changes in arrival order (passing over those held back), and within a
  group events get positions in arrival order; groups in flight together carry
  concurrent requests (none was answered before another was sent) and their appends
  commit in the order they reach the feed lock.
- A change answers only once its statement has committed. A change refused by its checks
  (404, 409, 412) writes nothing and leaves the others alone.
- If the statement fails in the database, nothing of it was written; each change then
  runs again alone, as it would have without grouping, so a failure reaches only the
  change that causes it.
- A group never waits behind one busy run: a run another transaction has locked (a
  longer change of it in flight) is passed over, and its change runs alone on its
  caller's connection (app/runs.py BUSY), waiting for the row as it would anyway. (A group
  in flight of the same lane never holds it: they never share a run.)
- A group's first change starts at once when the lane is idle (a change alone is never
  delayed); what arrives in the same turn of the event loop goes with it, and what queues
  while groups are in flight is the next group, so groups grow with load and latency
  does not.

After its commit a group reads the database's position once, on its own connection, for
all its changes (their Consistency-Token, web/consistency.py): one round trip per group
instead of one connection and round trip per change; the lane's other slots go on
meanwhile. The same statement sends the feed's wake-up for the group's enterprises
(NOTIFY: store/locks.py ANNOUNCE_COMMIT), which each request used to send after its
answer, coalesced by infra/feedwait.py: about two more round trips per group
(docs/performance.md).

While its lane is the only one writing (one busy enterprise), a slot keeps its
connection from one group to the next and takes the next group at once, so the lane's
load splits into two halves that take turns in the database and in Python; when other
lanes write too, it gives the connection back after each group (as one group at a time
did, which lets the next group grow: fewer, larger groups when many enterprises write).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import asyncpg

from service.infra.db import CONNECTION_LOST, drop_if_lost, usable

log = logging.getLogger(__name__)

MAX_GROUP = 64
# Groups of one lane in flight at once (see the module's docstring: "Depth"; the service
# takes GROUP_COMMIT_DEPTH, default 2).
DEPTH = 2

# execute(conn, items) -> one result per item: a value, or the DomainError that refused it
# (it wrote nothing). Raising means the whole statement failed.
Execute = Callable[[asyncpg.Connection, list], Awaitable[list]]
# position(conn, enterprise_ids) -> the position after the group's commit (what its changes'
# answers reflect), read by a statement that also wakes those enterprises' feed readers in
# every process (the wake-up each request would otherwise send after its answer).
Position = Callable[[asyncpg.Connection, list], Awaitable[int]]


@dataclass
class _Change:
    item: Any  # has .run_id
    future: asyncio.Future
    enterprise_id: str


@dataclass
class _Lane:
    queue: list[_Change] = field(default_factory=list)
    slots: int = 0  # its slot tasks alive, each carrying one group at a time
    starting: bool = False  # a slot was created and has not taken its group yet
    flying: set = field(default_factory=set)  # runs with a change in a group in flight


class GroupCommit:
    """Per process: a queue per lane, drained by up to `depth` slot tasks at a time."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float, execute: Execute,
                 position: Position | None = None, lanes: int = 1, depth: int = DEPTH):
        self.pool = pool
        self.lanes = max(1, lanes)
        self.depth = max(1, depth)
        self.acquire_timeout = acquire_timeout
        self.execute = execute
        self.position = position
        self._lanes: dict[int, _Lane] = {}
        self._slots: set[asyncio.Task] = set()
        self._alive = 0  # slots of every lane
        self.groups = 0  # statements that carried more than one change (for tests)
        self.shared = 0  # ... of more than one enterprise (for tests)
        self.overlapped = 0  # statements sent while another of their lane was in flight

    async def run(self, enterprise_id: str, item: Any) -> tuple[Any, int | None]:
        """Execute item in a statement shared with the enterprise's concurrent ones.

        Returns its result (raises its refusal or the failure) once committed, and the
        position after the commit (None without `position`, or when it could not be read).
        """
        change = _Change(item, asyncio.get_running_loop().create_future(), enterprise_id)
        key = hash(enterprise_id) % self.lanes
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append(change)
        if self._may_start(lane):
            self._start_slot(key, lane)
        return await change.future

    def _may_start(self, lane: _Lane) -> bool:
        """Whether another slot takes the queue now: at once when the lane is idle; beside
        groups in flight only while other lanes leave their share of slots unused, and once
        as many changes wait as each of those carries (a group of a few changes costs
        nearly a group's statement: overlapping stays worth it)."""
        # A slot created but not yet started takes the queue as it is when it starts: what
        # arrives in one turn of the event loop goes in one group.
        if lane.starting or lane.slots >= self.depth:
            return False
        return not lane.slots or (self._alive < max(self.lanes, self.depth)
                                  and len(lane.queue) * lane.slots >= len(lane.flying))

    def pending(self) -> tuple[int, int]:
        """(changes queued, changes in groups in flight), of every lane (for tests)."""
        return (sum(len(lane.queue) for lane in self._lanes.values()),
                sum(len(lane.flying) for lane in self._lanes.values()))

    @staticmethod
    def _may_take(lane: _Lane) -> bool:
        """Whether a slot free again takes the next group now (as _may_start: groups in
        flight beside it, each of len(flying) / (slots - 1) changes on average) or leaves
        the queue to them."""
        return len(lane.queue) * max(1, lane.slots - 1) >= len(lane.flying)

    def _start_slot(self, key: int, lane: _Lane) -> None:
        lane.slots += 1
        self._alive += 1
        lane.starting = True
        # Its own (empty) context: a slot serves many requests, logs for none.
        slot = asyncio.create_task(self._slot(key, lane), context=contextvars.Context())
        self._slots.add(slot)
        slot.add_done_callback(self._slots.discard)

    async def _slot(self, key: int, lane: _Lane) -> None:
        """Groups one after the other on one connection, while the queue holds any it may take."""
        lane.starting = False
        group: list[_Change] = []
        conn: asyncpg.Connection | None = None
        failed = False
        try:
            while self._may_take(lane) and (group := _take_group(lane.queue, lane.flying)):
                lane.flying.update(c.item.run_id for c in group)
                if lane.queue and self._may_start(lane):
                    self._start_slot(key, lane)  # more than a group's worth was waiting
                try:
                    conn = await self._commit(conn, group, overlapping=len(lane.flying) > len(group))
                finally:
                    lane.flying.difference_update(c.item.run_id for c in group)
                if conn is not None and (self._alive > lane.slots or self.depth == 1):
                    # Other lanes write too (or one group at a time): back to the pool
                    # after each group, as before; the turns of the event loop that takes
                    # let the next group grow (many enterprises: fewer, larger groups).
                    given, conn = conn, None  # (cancelled meanwhile: not given back twice)
                    await self.pool.release(given)
        except BaseException as exc:  # cancelled at shutdown: nobody may wait for ever
            failed = True
            for change in (*group, *lane.queue):
                _settle(change, exc if isinstance(exc, Exception) else asyncio.CancelledError())
            lane.queue.clear()
            raise
        finally:
            lane.slots -= 1
            self._alive -= 1
            if not lane.slots:
                if lane.queue and not failed:  # (not expected: with none in flight, none is held back)
                    self._start_slot(key, lane)
                elif self._lanes.get(key) is lane:
                    del self._lanes[key]
            if not failed:
                self._wake()
            if conn is not None:
                await self.pool.release(conn)

    def _wake(self) -> None:
        """A slot's share is free: a lane whose queue waits for one takes it."""
        for key, lane in list(self._lanes.items()):
            if lane.queue and self._may_start(lane):
                self._start_slot(key, lane)

    async def _commit(self, conn: asyncpg.Connection | None, group: list[_Change], *,
                      overlapping: bool) -> asyncpg.Connection | None:
        """One group's statement and answers; the connection to keep for the next group."""
        if conn is None or not usable(conn):
            if conn is not None:  # (a connection asyncpg took back already: a no-op)
                await self.pool.release(conn)
            try:
                conn = await self._acquire()
            except Exception as exc:  # no connection (pool exhausted, outage): all learn it
                for change in group:
                    _settle(change, exc)
                return None
        self.overlapped += overlapping
        try:
            results = await self.execute(conn, [c.item for c in group])
        except Exception as exc:
            # command_timeout, or the server ended the session: the connection is dropped
            # (as web.handlers.common.connection does) and every change learns it. The
            # failure is not theirs: none runs again alone.
            drop_if_lost(conn, type(exc))
            if len(group) == 1 or isinstance(exc, CONNECTION_LOST) or not usable(conn):
                for change in group:
                    _settle(change, exc)
                return conn
            log.info("a group of %d changes failed (%s: %s); running them one by one",
                     len(group), type(exc).__name__, exc)
            results = [await self._alone(conn, c) for c in group]
        else:
            self.groups += len(group) > 1
            self.shared += len({c.enterprise_id for c in group}) > 1
        position = await self._position(conn, group)
        for change, result in zip(group, results):
            _settle(change, result if isinstance(result, BaseException)
                    else (result, position))
        return conn

    async def _acquire(self) -> asyncpg.Connection:
        if self.pool.get_idle_size():  # taken at once: no timer (one per group otherwise)
            return await self.pool.acquire()
        async with asyncio.timeout(self.acquire_timeout):
            return await self.pool.acquire()

    async def _position(self, conn: asyncpg.Connection, group: list[_Change]) -> int | None:
        """Read after the commit, so it is past it, with the feed's wake-up for the group's
        enterprises. The changes are in either way: a failure here costs only this shortcut
        (each caller then reads a position and sends its wake-up itself)."""
        if self.position is None or not usable(conn):
            return None
        try:
            return await self.position(conn, sorted({c.enterprise_id for c in group}))
        except Exception as exc:
            log.info("no position after a group's commit (%s: %s)", type(exc).__name__, exc)
            return None

    async def _alone(self, conn: asyncpg.Connection, change: _Change) -> Any:
        try:
            (result,) = await self.execute(conn, [change.item])
        except Exception as exc:
            result = exc
        return result


def _take_group(queue: list[_Change], flying: set) -> list[_Change]:
    """The next group: queued changes in arrival order, at most one per run, none of a run
    in flight; the others stay queued in their order (a run's changes in theirs)."""
    group: list[_Change] = []
    rest: list[_Change] = []
    held = set(flying)  # runs this group may not take: in flight, or already in it
    for change in queue:
        run_id = change.item.run_id
        if run_id in held or len(group) >= MAX_GROUP:
            rest.append(change)
        else:
            held.add(run_id)
            group.append(change)
    queue[:] = rest
    return group


def _settle(change: _Change, result: Any) -> None:
    if change.future.done():
        return
    if isinstance(result, BaseException):
        change.future.set_exception(result)
    else:
        change.future.set_result(result)
