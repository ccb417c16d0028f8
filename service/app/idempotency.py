"""Idempotency keys: claim one in the write's transaction, keep the answer it got."""
from __future__ import annotations

import asyncpg

from service.store import idempotency as store


async def claim(conn: asyncpg.Connection, enterprise_id: str, key: str, method: str,
                path: str, fingerprint: bytes) -> asyncpg.Record | None:
    """None: the key is ours now; else the response an earlier request stored under it."""
    return await store.claim(conn, enterprise_id, key, method, path, fingerprint)


async def keep_response(conn: asyncpg.Connection, enterprise_id: str, key: str, status: int,
                        headers: dict, body: bytes) -> None:
    """Store the response with the key, in the same transaction as the write."""
    await store.store_response(conn, enterprise_id, key, status, headers, body)
