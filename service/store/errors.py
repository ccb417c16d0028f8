"""Translate asyncpg failures into domain errors at the store boundary."""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from service.domain.errors import Unavailable

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


class translated:
    """`with translated():` runs a store call; database outages become Unavailable (503).

    A class rather than a generator context manager: every request enters one or two.
    """

    __slots__ = ()

    def __enter__(self) -> "translated":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is not None and issubclass(kind, UNAVAILABLE):
            log.warning("database unavailable: %s: %s", kind.__name__, exc)
            raise Unavailable() from exc
        return False
