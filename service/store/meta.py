"""Schema migration (schema.sql and the ordered files of migrations/) and liveness queries."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import asyncpg

from service.store import roles
from service.store.locks import MIGRATE_LOCK
from service.store.roles import RuntimeRole

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


async def pending_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """The migrations this database has not had (all of them when it has no schema yet)."""
    names = [m.name for m in load_migrations(directory)]
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        return names
    applied = {row["name"] for row in await conn.fetch(APPLIED)}
    return [name for name in names if name not in applied]


async def migrate(conn: asyncpg.Connection, schema_sql: str | None = None,
                  directory: Path = MIGRATIONS_DIR,
                  runtime: RuntimeRole | None = None) -> list[str]:
    """Bring the database to schema.sql; returns the names of the migrations that ran.

    A fresh database gets schema.sql and every migration recorded as applied; an existing
    one gets its pending migrations in order, then schema.sql (idempotent) again. One
    transaction; processes starting together take turns (advisory lock). With `runtime`,
    that role is created (or reset) and given its grants (store/roles.py).
    """
    sql = schema_sql if schema_sql is not None else SCHEMA_FILE.read_text()
    migrations = load_migrations(directory)
    if runtime is not None:  # cluster-wide, so outside the transaction (races retried)
        await roles.ensure_role(conn, runtime)
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
            if runtime is not None:
                await roles.grant(conn, runtime.name)
    finally:
        await conn.execute(UNLOCK_MIGRATION)
    return [] if fresh else [m.name for m in pending]
