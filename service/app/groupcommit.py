"""Group commit: concurrent status changes share one statement and commit.

Why: every append holds its enterprise's feed lock until commit (store/events.py: that is
what makes the feed gap-safe), and a commit waits for its WAL flush. So one enterprise's
writes commit one at a time, one flush each: its write rate is capped near 1 / (round
trip + flush), however many connections write. And every statement costs PostgreSQL its
executor start-up (the status change is one statement of a dozen steps), whatever it
carries. Here, the simple status changes (lifecycle.SIMPLE_RUN_TARGETS: no cascade) that
arrive while a change of the same lane is in flight are queued, and then sent together as
ONE statement (store/moves.py, via app/runs.py): one round trip, one start-up, one flush
for all of them.

Lanes: an enterprise's changes always go to the same lane (a hash of its id), and a lane
has one statement in flight at a time; there are `lanes` of them (a quarter of the pool), so
several statements run at once while each still carries many changes when many
enterprises write. (One queue per enterprise made groups of one change with 100
enterprises: a third of the reference's rate. One queue for all would leave the pool
idle.) A statement of several enterprises takes their feed locks in one fixed order
(store/locks.py FEED_LOCKS), and two lanes never share an enterprise.

Nothing a single change guarantees is lost:
- A group runs the very statement a change alone runs, with the same checks per change;
  each change is checked against its run's current (locked) state.
- A group holds at most one change per run: a second change of a run waits for the next
  group, so two changes of one run behave as two requests one after the other. Groups
  keep arrival order, and within a group events get positions in arrival order.
- A change answers only once its statement has committed. A change refused by its checks
  (404, 409, 412) writes nothing and leaves the others alone.
- If the statement fails in the database, nothing of it was written; each change then
  runs again alone, as it would have without grouping, so a failure reaches only the
  change that causes it.
- A group never waits behind one busy run: a run another transaction has locked (a
  longer change of it in flight) is passed over, and its change runs alone on its
  caller's connection (app/runs.py BUSY), waiting for the row as it would anyway.
- A group's first change starts at once (a change alone is never delayed); the next group
  is what queued up meanwhile, so groups grow with load and latency does not.

After its commit a group reads the database's position once, on its own connection, for
all its changes (their Consistency-Token, web/consistency.py): one round trip per group
instead of one connection and round trip per change.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

MAX_GROUP = 64

# execute(conn, items) -> one result per item: a value, or the DomainError that refused it
# (it wrote nothing). Raising means the whole statement failed.
Execute = Callable[[asyncpg.Connection, list], Awaitable[list]]
# position(conn) -> the position after the group's commit (what its changes' answers reflect).
Position = Callable[[asyncpg.Connection], Awaitable[int]]


@dataclass
class _Change:
    item: Any  # has .run_id
    future: asyncio.Future
    enterprise_id: str


class GroupCommit:
    """Per process: a queue per lane, each drained by one leader task at a time."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float, execute: Execute,
                 position: Position | None = None, lanes: int = 1):
        self.pool = pool
        self.lanes = max(1, lanes)
        self.acquire_timeout = acquire_timeout
        self.execute = execute
        self.position = position
        self._queues: dict[int, list[_Change]] = {}  # lane -> its queue
        self._leaders: set[asyncio.Task] = set()
        self.groups = 0  # statements that carried more than one change (for tests)
        self.shared = 0  # ... of more than one enterprise (for tests)

    async def run(self, enterprise_id: str, item: Any) -> tuple[Any, int | None]:
        """Execute item in a statement shared with the enterprise's concurrent ones.

        Returns its result (raises its refusal or the failure) once committed, and the
        position after the commit (None without `position`, or when it could not be read).
        """
        change = _Change(item, asyncio.get_running_loop().create_future(), enterprise_id)
        lane = hash(enterprise_id) % self.lanes
        queue = self._queues.get(lane)
        if queue is None:
            self._queues[lane] = [change]
            # Its own (empty) context: the leader serves many requests, logs for none.
            leader = asyncio.create_task(self._lead(lane), context=contextvars.Context())
            self._leaders.add(leader)
            leader.add_done_callback(self._leaders.discard)
        else:
            queue.append(change)
        return await change.future

    async def _lead(self, lane: int) -> None:
        queue = self._queues[lane]
        group: list[_Change] = []
        try:
            while queue:
                group = _take_group(queue)
                await self._commit(group)
                group = []
        except BaseException as exc:  # cancelled at shutdown: nobody may wait for ever
            for change in (*group, *queue):
                _settle(change, exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        finally:
            del self._queues[lane]

    async def _commit(self, group: list[_Change]) -> None:
        try:
            conn = await self._acquire()
        except Exception as exc:  # no connection (pool exhausted, outage): all learn it
            for change in group:
                _settle(change, exc)
            return
        try:
            try:
                results = await self.execute(conn, [c.item for c in group])
            except Exception as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    # command_timeout: the server stopped answering; drop the connection
                    # (as web.handlers.common.connection does) and let every change learn it.
                    conn.terminate()
                if len(group) == 1 or conn.is_closed():
                    for change in group:
                        _settle(change, exc)
                    return
                log.info("a group of %d changes failed (%s: %s); running them one by one",
                         len(group), type(exc).__name__, exc)
                results = [await self._alone(conn, c) for c in group]
            else:
                self.groups += len(group) > 1
                self.shared += len({c.enterprise_id for c in group}) > 1
            position = await self._position(conn)
            for change, result in zip(group, results):
                _settle(change, result if isinstance(result, BaseException)
                        else (result, position))
        finally:
            await self.pool.release(conn)

    async def _acquire(self) -> asyncpg.Connection:
        if self.pool.get_idle_size():  # taken at once: no timer (one per group otherwise)
            return await self.pool.acquire()
        async with asyncio.timeout(self.acquire_timeout):
            return await self.pool.acquire()

    async def _position(self, conn: asyncpg.Connection) -> int | None:
        """Read after the commit, so it is past it. The changes are in either way: a failure
        here costs only this shortcut (each caller then reads a position itself)."""
        if self.position is None or conn.is_closed():
            return None
        try:
            return await self.position(conn)
        except Exception as exc:
            log.info("no position after a group's commit (%s: %s)", type(exc).__name__, exc)
            return None

    async def _alone(self, conn: asyncpg.Connection, change: _Change) -> Any:
        try:
            (result,) = await self.execute(conn, [change.item])
        except Exception as exc:
            result = exc
        return result


def _take_group(queue: list[_Change]) -> list[_Change]:
    """The next group: queued changes in arrival order, up to a second change of a run."""
    runs: set = set()
    size = 0
    for change in queue[:MAX_GROUP]:
        if change.item.run_id in runs:
            break
        runs.add(change.item.run_id)
        size += 1
    group, queue[:] = queue[:size], queue[size:]
    return group


def _settle(change: _Change, result: Any) -> None:
    if change.future.done():
        return
    if isinstance(result, BaseException):
        change.future.set_exception(result)
    else:
        change.future.set_result(result)
