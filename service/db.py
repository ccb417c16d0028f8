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


async def init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, so stores never json.dumps by hand.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


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
