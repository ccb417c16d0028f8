"""API tokens, as the CLI and the web's authentication use them (store/tokens.py holds the SQL)."""
from __future__ import annotations

import asyncpg

from service.store import tokens as store

# Scopes a token may carry: what the handlers require (web/handlers, @operation scope=);
# a new token gets them all unless told otherwise.
DEFAULT_SCOPES = store.DEFAULT_SCOPES


def hash_token(token: str) -> bytes:
    """What the database keeps of a token, and the key of the web's token cache."""
    return store.hash_token(token)


async def find(conn: asyncpg.Connection, token: str) -> asyncpg.Record | None:
    """The live token (id, enterprise_id, name, scopes, rate_limit); None: unknown or revoked."""
    return await store.find_token(conn, token)


async def create(conn: asyncpg.Connection, enterprise_id: str, name: str,
                 scopes: list[str] | tuple[str, ...] = DEFAULT_SCOPES,
                 rate_limit: int | None = None) -> tuple[int, str]:
    """(id, token): the plain token is returned once and never stored."""
    return await store.create_token(conn, enterprise_id, name, scopes, rate_limit)


async def list_all(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await store.list_tokens(conn)


async def revoke(conn: asyncpg.Connection, token_id: int) -> bool:
    """False when no live token has that id."""
    return await store.revoke_token(conn, token_id)
