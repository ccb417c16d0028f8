"""The timeout sweeper: moves overdue runs and stage runs to timeout, as `system` events.

Every TIMEOUT_SWEEP_SECONDS, in every service process; a session advisory lock lets only
one process sweep at a time. Each run is moved in its own transaction through the same
locked write path callers use, so a sweep is idempotent and a caller moving the same run
concurrently simply wins or loses the row lock: the loser sees the new status and either
does nothing (already timeout) or is refused (already finished).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from . import lifecycle
from .errors import Conflict, NotFound
from .store import runs, stage_runs, timeouts

log = logging.getLogger(__name__)

BATCH = 200


async def sweep_once(pool: asyncpg.Pool) -> int | None:
    """One sweep; the number of runs and stage runs timed out, None if another process swept."""
    async with pool.acquire() as conn:
        if not await timeouts.try_lock(conn):
            return None
        try:
            return await _sweep_runs(conn) + await _sweep_stage_runs(conn)
        finally:
            await timeouts.unlock(conn)


async def _in_batches(fetch, move) -> int:
    total = 0
    while True:
        batch = await fetch()
        moved = 0
        for row in batch:
            with contextlib.suppress(Conflict, NotFound):  # a caller moved it first
                await move(row)
                moved += 1
        total += moved
        if len(batch) < BATCH or moved == 0:  # no progress: never spin on the same rows
            return total


async def _sweep_runs(conn: asyncpg.Connection) -> int:
    return await _in_batches(
        lambda: timeouts.overdue_runs(conn, lifecycle.OPEN_RUN_STATUSES, BATCH),
        lambda row: runs.change_status(
            conn, row["enterprise_id"], row["pipeline_id"], row["id"], "timeout",
            lifecycle.SYSTEM, None, reason=lifecycle.TIMEOUT_REASON, system=True))


async def _sweep_stage_runs(conn: asyncpg.Connection) -> int:
    return await _in_batches(
        lambda: timeouts.overdue_stage_runs(conn, BATCH),
        lambda row: stage_runs.change_status(
            conn, row["enterprise_id"], row["run_id"], row["id"], "timeout",
            lifecycle.SYSTEM, None, system=True, reason=lifecycle.TIMEOUT_REASON))


async def run_forever(pool: asyncpg.Pool, every_seconds: float) -> None:
    """The background task: sweep, sleep, repeat; a failed sweep is logged and retried."""
    while True:
        try:
            moved = await sweep_once(pool)
            if moved:
                log.info("timed out %d runs and stage runs", moved)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("timeout sweep failed; retrying in %.0fs", every_seconds)
        await asyncio.sleep(every_seconds)
