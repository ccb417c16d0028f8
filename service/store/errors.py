"""Translate asyncpg failures into domain errors at the store boundary."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from ..errors import Unavailable

log = logging.getLogger(__name__)

# Failures that mean "the database is not answering right now", not "your request is wrong".
_UNAVAILABLE = (
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    OSError,
    asyncio.TimeoutError,
)


@contextlib.contextmanager
def translated():
    """Run a store call; database outages become Unavailable (503)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        raise Unavailable() from exc
