"""The database itself: readiness, migrations, and whether the event log is protected."""
from __future__ import annotations

import asyncpg

from service.store import meta, roles

# The role the service runs as when migrations go through another login (store/roles.py).
RuntimeRole = roles.RuntimeRole


async def ping(conn: asyncpg.Connection) -> bool:
    """Does the database answer SELECT 1 (readiness)?"""
    return await meta.ping(conn)


async def unprotected_because(conn: asyncpg.Connection) -> str | None:
    """Why the connected role could change run_events; None when it cannot."""
    return await roles.unprotected_because(conn)


async def migrate(conn: asyncpg.Connection, runtime: RuntimeRole | None = None) -> list[str]:
    """Bring the schema up to date (and the runtime role's grants); the migrations that ran."""
    return await meta.migrate(conn, runtime=runtime)


async def prepare(conn: asyncpg.Connection) -> list[str]:
    """Migrate when the connected role may; else the pending migrations it may not apply."""
    if await roles.can_migrate(conn):
        await meta.migrate(conn)
        return []
    return await meta.pending_migrations(conn)
