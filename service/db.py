"""asyncpg pool lifecycle and connection setup."""
from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .config import Config

log = logging.getLogger(__name__)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _encode_jsonb(value) -> bytes:
    return b"\x01" + json.dumps(value).encode()  # binary jsonb: version byte 1, then text


def _decode_jsonb(data: bytes):
    return json.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, so stores never json.dumps by hand. Binary format,
    # so jsonb inside composite values (replay reads stage_runs rows whole) decodes too.
    await conn.set_type_codec("jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb,
                              schema="pg_catalog", format="binary")


async def create_pool(config: Config, dsn: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=config.pool_min,
        max_size=config.pool_max,
        init=init_connection,
        command_timeout=config.statement_timeout_ms / 1000 + 1,
        server_settings={
            "statement_timeout": str(config.statement_timeout_ms),
            "application_name": "pipeline-runs",
        },
    )
