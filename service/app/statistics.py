"""The statistics keeper: planner statistics kept where autovacuum does not keep them.

A table that is never analyzed gives the planner no row counts per enterprise or per
pipeline, and it then reads a run by any index that starts with enterprise_id (every entry
of the run's pipeline) as readily as by the primary key: measured, twice the database's
CPU per status change and three times per GET with 1,500 runs of one pipeline
(docs/performance.md, "Planner statistics"). With autovacuum on (PostgreSQL's default)
this task finds nothing to do; with it off, it analyzes what autovacuum would have, by
autovacuum's own rule (store/statistics.py, schema.sql service_analyze_stale). Every
ANALYZE_CHECK_SECONDS, in every service process; an advisory lock lets one at a time work.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from service.infra.db import UNAVAILABLE
from service.store import statistics

log = logging.getLogger(__name__)


async def run_forever(pool: asyncpg.Pool, every_seconds: float) -> None:
    """The background task: sleep, analyze what is due, repeat; failures are logged."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            async with pool.acquire() as conn:
                analyzed = await statistics.analyze_stale(conn)
            if analyzed:
                log.debug("analyzed %s (autovacuum leaves them alone)", ", ".join(analyzed))
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as exc:  # an outage: one line a tick, not a traceback a tick
            log.warning("statistics keeper: database unavailable (%s: %s)",
                        type(exc).__name__, exc)
        except asyncpg.PostgresError as exc:  # e.g. a statement timeout: the next tick retries
            log.warning("statistics keeper: %s: %s", type(exc).__name__, exc)
        except Exception:
            log.exception("statistics keeper failed; trying again in %.0fs", every_seconds)
