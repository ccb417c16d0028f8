"""The timeout sweeper: moves overdue runs and stage runs to timeout, as `system` events.

Each sweep also closes the insights hours that ended (close_insights: the running
totals' watermark, docs/insights.md).

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
from typing import Callable

import asyncpg

from service.domain import lifecycle
from service.domain.errors import Conflict, NotFound
from service.infra.metrics import Metrics
from service.app import runs, stage_runs
from service.app.context import OnConnection, system
from service.store import idempotency, insights, partitions, timeouts
from service.infra.appended import appended_events
from service.infra.db import UNAVAILABLE

log = logging.getLogger(__name__)

BATCH = 200


async def sweep_once(pool: asyncpg.Pool, metrics: Metrics | None = None,
                     appended: Callable[[str], None] | None = None) -> int | None:
    """One sweep; the number of runs and stage runs timed out, None if another process swept.

    appended(enterprise_id): called after each committed move (wakes the feed's readers).
    """
    async with pool.acquire() as conn:
        if not await timeouts.try_lock(conn):
            return None
        try:
            runs_moved = await _sweep_runs(conn, metrics, appended)
            stage_runs_moved = await _sweep_stage_runs(conn, metrics, appended)
            await idempotency.purge_expired(conn)  # Idempotency-Keys older than 24 h
            await _ensure_partitions(conn)
            await close_insights(conn)
        finally:
            await timeouts.unlock(conn)
    if metrics is not None:
        metrics.sweeps += 1
        metrics.timed_out["run"] += runs_moved
        metrics.timed_out["stage_run"] += stage_runs_moved
    return runs_moved + stage_runs_moved


async def _ensure_partitions(conn: asyncpg.Connection) -> None:
    """run_events' partitions for the months ahead (store/partitions.py); never fatal."""
    try:
        made = await partitions.ensure_ahead(conn)
    except (asyncpg.PostgresError, OSError) as exc:  # e.g. lock_timeout: next sweep retries
        log.warning("run_events partitions not made ahead this time: %s", exc)
        return
    if made:
        log.info("created %d run_events partitions ahead", made)


async def close_insights(conn: asyncpg.Connection) -> int:
    """Close every enterprise's ended insights hours (store/insights.py close): one
    transaction each, under its feed lock, so writers of one enterprise wait at most for
    its own closing; never fatal (the next sweep tries again, and answers are right
    whatever the watermark's lag: they read more hourly rows). The rows written."""
    made = 0
    try:
        for enterprise_id in await insights.to_close(conn):
            async with conn.transaction():
                made += await insights.close(conn, enterprise_id)
    except (asyncpg.PostgresError, OSError) as exc:
        log.warning("insights hours not closed this time: %s", exc)
    return made


async def _in_batches(fetch, move, metrics: Metrics | None,
                      on_appended: Callable[[str], None] | None) -> int:
    total = 0
    while True:
        batch = await fetch()
        moved = 0
        for row in batch:
            with contextlib.suppress(Conflict, NotFound), appended_events() as appended:
                await move(row)  # its own transaction: committed when it returns
                moved += 1
                if metrics is not None:
                    metrics.count_appended(appended)
                if on_appended is not None:
                    on_appended(row["enterprise_id"])
        total += moved
        if len(batch) < BATCH or moved == 0:  # no progress: never spin on the same rows
            return total


async def _sweep_runs(conn: asyncpg.Connection, metrics: Metrics | None, appended) -> int:
    return await _in_batches(
        lambda: timeouts.overdue_runs(conn, lifecycle.OPEN_RUN_STATUSES, BATCH),
        lambda row: runs.change_status(
            OnConnection(conn), system(row["enterprise_id"]), row["pipeline_id"], row["id"],
            "timeout", reason=lifecycle.TIMEOUT_REASON, system=True),
        metrics, appended)


async def _sweep_stage_runs(conn: asyncpg.Connection, metrics: Metrics | None,
                            appended) -> int:
    return await _in_batches(
        lambda: timeouts.overdue_stage_runs(conn, BATCH),
        lambda row: stage_runs.change_status(
            OnConnection(conn), system(row["enterprise_id"]), row["run_id"], row["id"],
            "timeout", system=True, reason=lifecycle.TIMEOUT_REASON),
        metrics, appended)


async def run_forever(pool: asyncpg.Pool, every_seconds: float,
                      metrics: Metrics | None = None,
                      appended: Callable[[str], None] | None = None) -> None:
    """The background task: sweep, sleep, repeat; a failed sweep is logged and retried."""
    while True:
        try:
            moved = await sweep_once(pool, metrics, appended)
            if moved:
                log.info("timed out %d runs and stage runs", moved)
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as exc:  # an outage: one line a tick, not a traceback a tick
            if metrics is not None:
                metrics.sweep_failures += 1
            log.warning("timeout sweep: database unavailable (%s: %s); retrying in %.0fs",
                        type(exc).__name__, exc, every_seconds)
        except Exception:
            if metrics is not None:
                metrics.sweep_failures += 1
            log.exception("timeout sweep failed; retrying in %.0fs", every_seconds)
        await asyncio.sleep(every_seconds)
