"""Translate asyncpg failures into domain errors at the store boundary."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from ..errors import Unavailable

log = logging.getLogger(__name__)

# Failures that mean "the database is not answering right now", not "your request is wrong".
UNAVAILABLE = (
    # 57xxx: statement_timeout (QueryCanceled), admin/crash shutdown, cannot connect now.
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.PostgresConnectionError,  # 08xxx
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    asyncpg.exceptions.LockNotAvailableError,  # 55P03: lock_timeout
    asyncpg.exceptions.TransactionRollbackError,  # 40xxx: deadlock, serialization; retry
    asyncpg.exceptions.InterfaceError,  # includes ConnectionDoesNotExistError (socket lost)
    # What a connection that timed out mid-query says when it is used again.
    asyncpg.exceptions.InternalClientError,
    OSError,  # refused, reset, no route, unix socket gone
    asyncio.TimeoutError,  # connect timeout, acquire timeout, command_timeout
)


@contextlib.contextmanager
def translated():
    """Run a store call; database outages become Unavailable (503)."""
    try:
        yield
    except UNAVAILABLE as exc:
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        raise Unavailable() from exc
