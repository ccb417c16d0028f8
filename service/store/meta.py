"""Schema migration and liveness queries."""
from __future__ import annotations

from pathlib import Path

import asyncpg

from service.store.locks import MIGRATE_LOCK

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.sql"

PING = "SELECT 1"
LOCK_MIGRATION = f"SELECT pg_advisory_lock({MIGRATE_LOCK})"
UNLOCK_MIGRATION = f"SELECT pg_advisory_unlock({MIGRATE_LOCK})"


async def ping(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval(PING) == 1


async def migrate(conn: asyncpg.Connection, schema_sql: str | None = None) -> None:
    """Apply schema.sql (idempotent); processes starting together take turns."""
    sql = schema_sql if schema_sql is not None else SCHEMA_FILE.read_text()
    await conn.execute(LOCK_MIGRATION)
    try:
        async with conn.transaction():
            await conn.execute(sql)
    finally:
        await conn.execute(UNLOCK_MIGRATION)
