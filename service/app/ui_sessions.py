"""Page sessions: sign-in starts one on the server, sign-out ends it, a page resolves it."""
from __future__ import annotations

import hashlib
import secrets

import asyncpg

from service.store import ui_sessions as store


def _hash(session_id: str) -> bytes:
    # Only the hash is stored: a leaked table signs nobody in.
    return hashlib.sha256(session_id.encode(errors="surrogateescape")).digest()


async def start(conn: asyncpg.Connection, enterprise_id: str, token_id: int,
                seconds: float) -> str:
    """A new session of that token, valid for `seconds`: its id, for the cookie."""
    session_id = secrets.token_urlsafe(32)
    await store.create(conn, _hash(session_id), enterprise_id, token_id, seconds)
    return session_id


async def resolve(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    """The session's token row; None when it ended, expired or its token was revoked."""
    return await store.find(conn, _hash(session_id))


async def end(conn: asyncpg.Connection, session_id: str) -> None:
    await store.delete(conn, _hash(session_id))
