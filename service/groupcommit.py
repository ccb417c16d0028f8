"""Group commit: concurrent status changes of one enterprise share one transaction.

Why: every append holds its enterprise's feed lock until commit (store/events.py: that is
what makes the feed gap-safe), and a commit waits for its WAL flush. So one enterprise's
writes commit one at a time, one flush each: its write rate is capped near 1 / fsync time,
however many connections write. Here, the simple status changes (lifecycle.
SIMPLE_RUN_TARGETS: one statement, no cascade) that arrive while a change of the same
enterprise is running are queued and then run together, one after the other, in one
transaction: one feed lock acquisition and one flush for all of them.

Nothing a single change guarantees is lost:
- Each change is the same statement as alone (store.runs.change_status), with the same
  checks; the changes of a group run in arrival order, each seeing the ones before it (two
  changes of one run behave as two requests one after the other).
- A change answers only once its transaction has committed. A change refused by its checks
  (404, 409, 412) has written nothing, so it leaves the others alone.
- If any statement of a group fails in the database (the transaction is then aborted),
  the group is rolled back and each change runs again alone, as it would have without
  grouping; a failure then reaches only the change that causes it.
- Lock order stays "run rows, then the feed lock": a group of several first locks all its
  runs' rows, in id order, and only then takes the feed lock (with its first append). A
  transaction holding the feed lock still waits for nothing.
- A group's first change starts at once (a change alone is never delayed); the next group
  is what queued up meanwhile, so groups grow with load and latency does not.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import asyncpg

from .errors import DomainError
from .store.appended import APPENDED

log = logging.getLogger(__name__)

MAX_GROUP = 64
LOCK_RUNS = """
SELECT id FROM pipeline_runs WHERE enterprise_id = $1 AND id = ANY($2::uuid[])
ORDER BY id FOR UPDATE
"""

Work = Callable[[asyncpg.Connection], Awaitable[Any]]


@dataclass
class _Change:
    run_id: uuid.UUID
    work: Work
    future: asyncio.Future
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class GroupCommit:
    """Per process: a queue per enterprise, drained by one leader task at a time."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float):
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self._queues: dict[str, list[_Change]] = {}
        self._leaders: set[asyncio.Task] = set()
        self.groups = 0  # transactions committed with more than one change (for tests)

    async def run(self, enterprise_id: str, run_id: uuid.UUID, work: Work) -> Any:
        """work(conn) in a transaction shared with the enterprise's concurrent changes.

        Returns (or raises) what work returns (raises), once its transaction committed.
        """
        change = _Change(run_id, work, asyncio.get_running_loop().create_future())
        queue = self._queues.get(enterprise_id)
        if queue is None:
            self._queues[enterprise_id] = [change]
            # Its own (empty) context: the leader serves many requests, logs for none.
            leader = asyncio.create_task(self._lead(enterprise_id), context=contextvars.Context())
            self._leaders.add(leader)
            leader.add_done_callback(self._leaders.discard)
        else:
            queue.append(change)
        return await change.future

    async def _lead(self, enterprise_id: str) -> None:
        queue = self._queues[enterprise_id]
        group: list[_Change] = []
        try:
            while queue:
                group, queue[:] = queue[:MAX_GROUP], queue[MAX_GROUP:]
                await self._commit(enterprise_id, group)
                group = []
        except BaseException as exc:  # cancelled at shutdown: nobody may wait for ever
            for change in (*group, *queue):
                _settle(change, exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        finally:
            del self._queues[enterprise_id]

    async def _commit(self, enterprise_id: str, group: list[_Change]) -> None:
        try:
            async with asyncio.timeout(self.acquire_timeout):
                conn = await self.pool.acquire()
        except Exception as exc:  # no connection (pool exhausted, outage): all learn it
            for change in group:
                _settle(change, exc)
            return
        marks = [_appended_mark(change) for change in group]
        try:
            try:
                results = await self._together(conn, enterprise_id, group)
            except Exception as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    # command_timeout: the server stopped answering; drop the connection
                    # (as api.common.connection does) and let every change learn it.
                    conn.terminate()
                if len(group) == 1 or conn.is_closed():
                    for change in group:
                        _settle(change, exc)
                    return
                # Rolled back: each change again, alone, as it would have run without us.
                log.info("a group of %d changes failed (%s: %s); running them one by one",
                         len(group), type(exc).__name__, exc)
                results = []
                for change, appended in zip(group, marks):
                    if appended is not None:  # what it reported in the rolled-back try
                        del appended[0][appended[1]:]
                    try:
                        (result,) = await self._together(conn, enterprise_id, [change])
                    except Exception as alone:
                        result = alone
                    results.append(result)
            for change, result in zip(group, results):
                _settle(change, result)
        finally:
            await self.pool.release(conn)

    async def _together(self, conn: asyncpg.Connection, enterprise_id: str,
                        group: list[_Change]) -> list:
        """Run the group's works, committed together; a DomainError is a work's result."""
        if len(group) == 1:  # alone: exactly the statement(s) it would run without us
            return [await _in_context(group[0], conn)]
        results = []
        async with conn.transaction():
            await conn.execute(LOCK_RUNS, enterprise_id,
                               sorted({change.run_id for change in group}))
            for change in group:
                results.append(await _in_context(change, conn))
        self.groups += 1
        return results


async def _in_context(change: _Change, conn: asyncpg.Connection) -> Any:
    """The work in its caller's context (request id for logs, what it appended for metrics)."""
    task = asyncio.get_running_loop().create_task(change.work(conn), context=change.context)
    try:
        return await task
    except DomainError as refused:  # refused by its checks: wrote nothing
        return refused


def _appended_mark(change: _Change) -> tuple[list, int] | None:
    """The change's list of appended events (metrics) and its length now."""
    pending = change.context.get(APPENDED)
    return None if pending is None else (pending, len(pending))


def _settle(change: _Change, result: Any) -> None:
    if change.future.done():
        return
    if isinstance(result, BaseException):
        change.future.set_exception(result)
    else:
        change.future.set_result(result)
