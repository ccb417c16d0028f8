"""API tokens: created, looked up by hash, listed, revoked. Plain tokens are never stored."""
from __future__ import annotations

import hashlib
import secrets

import asyncpg

# Every request hashes its token (the token cache's key): CPython's own SHA-256 where it has
# it. hashlib's goes through OpenSSL, which looks the algorithm up and frees it again on each
# call: several µs of a GET's CPU under load against about half a µs. The same digest.
try:
    from _sha2 import sha256 as _sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # Python 3.11
    except ImportError:
        _sha256 = hashlib.sha256

DEFAULT_SCOPES = ("runs:read", "runs:write", "audit:read", "webhooks:manage")

INSERT_TOKEN = """
INSERT INTO api_tokens (enterprise_id, name, token_hash, scopes, rate_limit)
VALUES ($1, $2, $3, $4, $5)
RETURNING id
"""
SELECT_BY_HASH = """
SELECT id, enterprise_id, name, scopes, rate_limit FROM api_tokens
WHERE token_hash = $1 AND revoked_at IS NULL
"""
REVOKE_BY_NAME = """
UPDATE api_tokens SET revoked_at = now()
WHERE enterprise_id = $1 AND name = $2 AND revoked_at IS NULL
"""
LIST_TOKENS = """
SELECT id, enterprise_id, name, scopes, rate_limit, created_at, revoked_at FROM api_tokens
ORDER BY id
"""
REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id
"""


def hash_token(token: str) -> bytes:
    # surrogateescape: a header with bytes that are not UTF-8 hashes (and matches nothing).
    return _sha256(token.encode(errors="surrogateescape")).digest()


def new_token() -> str:
    return "pr_" + secrets.token_urlsafe(32)


async def create_token(conn: asyncpg.Connection, enterprise_id: str, name: str,
                       scopes: list[str] | tuple[str, ...] = DEFAULT_SCOPES,
                       rate_limit: int | None = None) -> tuple[int, str]:
    """rate_limit: this token's requests/s (None: RATE_LIMIT_RPS; 0: not limited)."""
    token = new_token()
    token_id = await conn.fetchval(INSERT_TOKEN, enterprise_id, name, hash_token(token),
                                   list(scopes), rate_limit)
    return token_id, token


async def find_token(conn: asyncpg.Connection, token: str) -> asyncpg.Record | None:
    return await conn.fetchrow(SELECT_BY_HASH, hash_token(token))


async def list_tokens(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(LIST_TOKENS)


async def revoke_token(conn: asyncpg.Connection, token_id: int) -> bool:
    return await conn.fetchval(REVOKE_TOKEN, token_id) is not None


async def rotate_token(conn: asyncpg.Connection, enterprise_id: str, name: str) -> tuple[int, str]:
    """Revoke the enterprise's live tokens of that name and issue a fresh one."""
    async with conn.transaction():
        await conn.execute(REVOKE_BY_NAME, enterprise_id, name)
        return await create_token(conn, enterprise_id, name)
