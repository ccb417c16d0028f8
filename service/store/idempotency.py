"""Idempotency keys: the first response to a keyed POST, kept 24 hours per enterprise.

A key is claimed by inserting its row inside the request's own transaction, before the
write it protects; the stored response is filled in by the same transaction. So the key
and the write commit together or not at all. A concurrent request with the same key
blocks on the primary key until the first commits (then finds its response) or rolls
back (then claims the key itself). Only successful responses are ever committed.
"""
from __future__ import annotations

from typing import Any

import asyncpg

TTL = "24 hours"  # keys older than this are treated as new and purged by the sweeper
PURGE_BATCH = 5000

# Claims the key: a fresh insert, or the reuse of an expired row. No row back means a
# live key already exists (committed: a concurrent claim was waited for).
CLAIM = f"""
INSERT INTO idempotency_keys AS k (enterprise_id, key, method, path, fingerprint)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (enterprise_id, key) DO UPDATE SET
    method = EXCLUDED.method, path = EXCLUDED.path, fingerprint = EXCLUDED.fingerprint,
    status = NULL, headers = NULL, body = NULL, created_at = now()
WHERE k.created_at <= now() - interval '{TTL}'
RETURNING true
"""
SELECT_KEY = """
SELECT fingerprint, method, path, status, headers, body FROM idempotency_keys
WHERE enterprise_id = $1 AND key = $2
"""
STORE_RESPONSE = """
UPDATE idempotency_keys SET status = $3, headers = $4, body = $5
WHERE enterprise_id = $1 AND key = $2
"""
PURGE_EXPIRED = f"""
DELETE FROM idempotency_keys k USING (
    SELECT enterprise_id, key FROM idempotency_keys
    WHERE created_at <= now() - interval '{TTL}'
    LIMIT {PURGE_BATCH}
) old
WHERE k.enterprise_id = old.enterprise_id AND k.key = old.key
"""


async def claim(conn: asyncpg.Connection, enterprise_id: str, key: str, method: str, path: str,
                fingerprint: bytes) -> asyncpg.Record | None:
    """None when this transaction now owns the key; else the stored (committed) row."""
    if await conn.fetchval(CLAIM, enterprise_id, key, method, path, fingerprint):
        return None
    return await conn.fetchrow(SELECT_KEY, enterprise_id, key)


async def store_response(conn: asyncpg.Connection, enterprise_id: str, key: str, status: int,
                         headers: dict[str, Any], body: bytes) -> None:
    await conn.execute(STORE_RESPONSE, enterprise_id, key, status, headers, body)


async def purge_expired(conn: asyncpg.Connection) -> int:
    """Delete expired keys in batches; the number deleted."""
    total = 0
    while True:
        deleted = int((await conn.execute(PURGE_EXPIRED)).split()[-1])
        total += deleted
        if deleted < PURGE_BATCH:
            return total
