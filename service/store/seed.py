"""SQL of the bulk seeder (app/seed.py): plain inserts for pipelines, COPY for the rest."""
from __future__ import annotations

import contextlib
from collections import Counter
from datetime import datetime
from typing import AsyncIterator, Iterable, Sequence

import asyncpg

from service.infra.db import decode_jsonb, init_connection
from service.store import append, counts, insights

try:
    import orjson
except ImportError:  # optional (the `fast` extra): json.dumps does the same, slower
    orjson = None
from service.store.columns import RUN_STATE_COLUMNS, STAGE_RUN_COLUMNS

EVENT_COLUMNS = append.APPENDED_COLUMNS
_ID = RUN_STATE_COLUMNS.index("id")

INSERT_PIPELINE = """
INSERT INTO pipelines (enterprise_id, id, name, description, timeout_seconds, is_active,
                       is_default, last_run_number, last_stage_ordinal, created_by, updated_by,
                       created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, true, false, $6, $7, $8, $8, $9, $9)
"""
INSERT_STAGE = """
INSERT INTO stages (enterprise_id, id, pipeline_id, name, description, timeout_seconds, ordinal,
                    created_by, updated_by, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9)
"""
# run_events is partitioned by month: the months the seeded events fall in must exist.
ENSURE_PARTITIONS = "SELECT run_events_ensure_partitions($1, $2)"


async def ensure_partitions(conn: asyncpg.Connection, first: datetime, last: datetime) -> None:
    await conn.fetchval(ENSURE_PARTITIONS, first, last)


@contextlib.asynccontextmanager
async def fast_jsonb(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """jsonb encoded by orjson on this connection meanwhile (the same JSON values)."""
    if orjson is None:
        yield
        return
    await conn.set_type_codec("jsonb", encoder=lambda value: b"\x01" + orjson.dumps(value),
                              decoder=decode_jsonb, schema="pg_catalog", format="binary")
    try:
        yield
    finally:
        await init_connection(conn)  # the service's codecs again


async def insert_pipelines(conn: asyncpg.Connection, pipelines: Iterable[Sequence],
                           stages: Iterable[Sequence]) -> None:
    await conn.executemany(INSERT_PIPELINE, pipelines)
    await conn.executemany(INSERT_STAGE, stages)


# The tables a seed loads, analyzed as they grow (service/app/seed.py): a bulk load
# outruns autovacuum, or runs where it is off, and the batch's statements (ids = ANY, the
# recoveries' window per pipeline) need row estimates: without any, a 1M seed sat for
# minutes on one batch at 320,000 runs. As the table owner (or a superuser) only: for
# another role PostgreSQL skips each table with a warning.
ANALYZE_LOADED = ("ANALYZE pipeline_runs, stage_runs, run_counts, run_insights, "
                  "run_recoveries, run_insights_totals")


async def analyze_loaded(conn: asyncpg.Connection) -> None:
    await conn.execute(ANALYZE_LOADED)


async def copy_batch(conn: asyncpg.Connection, enterprise_id: str, events: list[tuple],
                     runs: list[tuple], stage_runs: list[tuple], run_counts: Counter,
                     closes: datetime) -> None:
    """One batch in one transaction: the events (positions in list order), their projection
    and its counters (run_counts deltas, keyed (enterprise_id, pipeline_id, status)); the
    hours ended by `closes` closed (no later batch has a key before it)."""
    async with conn.transaction():
        await conn.execute(insights.BULK_LOAD)  # the keys of the batch's runs: added below
        await append.copy_events(conn, enterprise_id, events)
        if runs:
            await conn.copy_records_to_table("pipeline_runs", records=runs,
                                             columns=RUN_STATE_COLUMNS)
        if stage_runs:
            await conn.copy_records_to_table("stage_runs", records=stage_runs,
                                             columns=STAGE_RUN_COLUMNS)
        await counts.apply_deltas(conn, run_counts)
        if runs:
            await insights.add_runs(conn, enterprise_id, [r[_ID] for r in runs])
            await insights.add_recoveries(conn, enterprise_id, [r[_ID] for r in runs])
            await insights.rebuild_batch_totals(conn, enterprise_id, [r[_ID] for r in runs])
            await insights.close(conn, enterprise_id, closes)


async def close_hours(conn: asyncpg.Connection, enterprise_id: str) -> None:
    """After the last batch: every ended hour closed, as the sweeper would."""
    async with conn.transaction():
        await insights.close(conn, enterprise_id)
