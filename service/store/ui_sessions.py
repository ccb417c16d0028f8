"""Sessions of the /ui/ pages: one row per sign-in, found by the hash of the cookie's id."""
from __future__ import annotations

import asyncpg

INSERT_SESSION = """
INSERT INTO ui_sessions (id_hash, enterprise_id, token_id, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
"""
# The signed-in token as auth resolves one: a revoked token ends its sessions at once.
SELECT_SESSION = """
SELECT t.id, t.enterprise_id, t.name, t.scopes, t.rate_limit
FROM ui_sessions s JOIN api_tokens t ON t.id = s.token_id
WHERE s.id_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL
"""
DELETE_SESSION = "DELETE FROM ui_sessions WHERE id_hash = $1"
DELETE_EXPIRED = "DELETE FROM ui_sessions WHERE expires_at <= now()"


async def create(conn: asyncpg.Connection, id_hash: bytes, enterprise_id: str, token_id: int,
                 seconds: float) -> None:
    async with conn.transaction():
        await conn.execute(DELETE_EXPIRED)  # sign-ins are rare: they tidy up as they come
        await conn.execute(INSERT_SESSION, id_hash, enterprise_id, token_id, seconds)


async def find(conn: asyncpg.Connection, id_hash: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(SELECT_SESSION, id_hash)


async def delete(conn: asyncpg.Connection, id_hash: bytes) -> None:
    await conn.execute(DELETE_SESSION, id_hash)
