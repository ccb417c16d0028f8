"""Schema migration (schema.sql and the ordered files of migrations/) and liveness queries."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import asyncpg

from service.store.locks import MIGRATE_LOCK

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.sql"
MIGRATIONS_DIR = SCHEMA_FILE.parent / "migrations"  # beside schema.sql, wherever it is

PING = "SELECT 1"
LOCK_MIGRATION = f"SELECT pg_advisory_lock({MIGRATE_LOCK})"
UNLOCK_MIGRATION = f"SELECT pg_advisory_unlock({MIGRATE_LOCK})"
# The migrator's own record: each migration's name once it ran (or, on a fresh database,
# once schema.sql made it unnecessary).
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
# Fresh: none of the service's tables yet (a database from before migrations existed has
# them without schema_migrations, and gets every migration).
IS_FRESH = """
SELECT to_regclass('schema_migrations') IS NULL AND to_regclass('api_tokens') IS NULL
   AND to_regclass('pipelines') IS NULL AND to_regclass('run_events') IS NULL"""
APPLIED = "SELECT name FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (name) SELECT unnest($1::text[])"


class Migration(NamedTuple):
    name: str  # the file's name without .sql; its order is the name's order
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(path.stem, path.read_text()) for path in sorted(directory.glob("*.sql"))]


async def ping(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval(PING) == 1


async def migrate(conn: asyncpg.Connection, schema_sql: str | None = None,
                  directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Bring the database to schema.sql; returns the names of the migrations that ran.

    A fresh database gets schema.sql and every migration recorded as applied; an existing
    one gets its pending migrations in order, then schema.sql (idempotent) again. One
    transaction; processes starting together take turns (advisory lock).
    """
    sql = schema_sql if schema_sql is not None else SCHEMA_FILE.read_text()
    migrations = load_migrations(directory)
    await conn.execute(LOCK_MIGRATION)
    try:
        async with conn.transaction():
            fresh = await conn.fetchval(IS_FRESH)
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            applied = {row["name"] for row in await conn.fetch(APPLIED)}
            pending = [m for m in migrations if m.name not in applied]
            if not fresh:
                for migration in pending:
                    await conn.execute(migration.sql)
            await conn.execute(sql)
            await conn.execute(RECORD, [m.name for m in pending])
    finally:
        await conn.execute(UNLOCK_MIGRATION)
    return [] if fresh else [m.name for m in pending]
