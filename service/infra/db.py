"""asyncpg pool lifecycle and connection setup."""
from __future__ import annotations

import asyncio
import json
import logging
import weakref
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from service.config import Config

log = logging.getLogger(__name__)

# Failures that mean "the database is not answering right now", not "your request is wrong"
# (app/outages.py turns them into a 503; the sweeper logs them in one line).
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

# ... of those, the ones after which the connection itself is no use: the server ended the
# session (administrator, crash, restart) or the socket went. Until asyncpg sees the socket
# close, such a connection still looks open and refuses the next statement ("another
# operation is in progress"): whoever holds it drops it instead of running more on it.
CONNECTION_LOST = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)


def usable(conn) -> bool:
    """Whether a pooled connection someone kept can run a statement. asyncpg gives the
    holder of a connection that closed back to its pool by itself and detaches the proxy,
    which then raises on every call, is_closed() included."""
    try:
        return not conn.is_closed()
    except asyncpg.exceptions.InterfaceError:
        return False


def drop_if_lost(conn, failure: type) -> None:
    """After command_timeout (the server stopped answering) or a lost session, terminate
    the connection: release() would wait up to command_timeout again for the query's
    cancellation, or reset one that can only fail. One asyncpg took back is left alone."""
    if issubclass(failure, (asyncio.TimeoutError, *CONNECTION_LOST)) and usable(conn):
        conn.terminate()


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def dsn_login(dsn: str) -> tuple[str | None, str | None]:
    """The user and password a DSN names (None when it names none)."""
    parts = urlsplit(dsn)
    return (None if parts.username is None else unquote(parts.username),
            None if parts.password is None else unquote(parts.password))


def with_login(dsn: str, user: str, password: str | None = None) -> str:
    """The DSN with another user (and password, or none)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    login = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


try:  # the `fast` extra: replay/verify decode a jsonb value per run, millions of them
    from orjson import JSONDecodeError as _FastError
    from orjson import JSONEncodeError as _FastEncodeError
    from orjson import dumps as _fast_dumps
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is optional
    _fast_loads = _fast_dumps = None


def _encode_jsonb(value) -> bytes:
    # Binary jsonb: version byte 1, then the text. orjson where it can (a status change
    # writes two jsonb values: ~5 µs of the service's CPU less a PUT, 3.3 and 1.8 µs
    # against 0.2 and 0.1); the standard library for what orjson refuses (an integer past
    # 64 bits, a key that is not a string). Either text makes the same jsonb (PostgreSQL
    # normalizes it; NaN never gets here: request bodies refuse it, web/parser.py).
    if _fast_dumps is not None:
        try:
            return b"\x01" + _fast_dumps(value)
        except _FastEncodeError:
            pass
    return b"\x01" + json.dumps(value).encode()


def decode_jsonb(data: bytes):
    if _fast_loads is not None:
        try:
            return _fast_loads(data[1:])
        except _FastError:  # e.g. an integer past 64 bits: the standard library has no limit
            pass
    return json.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, so stores never json.dumps by hand. Binary format,
    # so jsonb inside composite values (replay reads stage_runs rows whole) decodes too.
    await conn.set_type_codec("jsonb", encoder=_encode_jsonb, decoder=decode_jsonb,
                              schema="pg_catalog", format="binary")


# Pooled connections that took session state (a session advisory lock): see keeps_session_state.
_SESSION_STATE: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


def keeps_session_state(conn) -> None:
    """Mark a pooled connection that took session state: released, it gets asyncpg's full reset.

    asyncpg resets every connection it takes back (pg_advisory_unlock_all, CLOSE ALL,
    UNLISTEN *, RESET ALL): one more round trip per request. Request handlers leave no
    session state behind (transaction-scoped locks only, no SET, LISTEN or open cursors), so
    the pool skips it, except for connections marked here (the sweeper's session lock).
    """
    _SESSION_STATE.add(getattr(conn, "_con", None) or conn)  # the pool hands out proxies


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # The pool has already rolled back an open transaction and dropped listeners.
    if conn in _SESSION_STATE:
        _SESSION_STATE.discard(conn)
        await conn.execute(conn.get_reset_query())


def pool_has_free(pool: asyncpg.Pool) -> bool:
    """Whether acquire() takes a connection at once: a holder is idle in the pool's queue
    (it may still have to connect, bounded by DB_CONNECT_TIMEOUT). get_idle_size() says
    about as much by walking every holder, a tenth of the pool's cost a request."""
    queue = getattr(pool, "_queue", None)  # asyncpg's queue of free holders
    return bool(pool.get_idle_size()) if queue is None else not queue.empty()


def fit_to_pass_on(pool: asyncpg.Pool, conn) -> bool:
    """A connection a request is done with may go straight to the next request (slots.py
    hand_over) rather than through release() and acquire(), when release() would only
    have put it back: open, outside a transaction, no session state, short of the pool's
    max_queries, and nothing else (a group-commit lane, the dispatcher) waits on the pool,
    which must get its turn. Read from asyncpg's own fields (the pool's queue, the proxy's
    connection); a version without them passes nothing on."""
    try:
        con = conn._con  # the pool's proxy: its connection
        if pool._queue._getters or con._protocol.queries_count >= pool._max_queries:
            return False
    except AttributeError:
        return False
    return (not con.is_closed() and not con.is_in_transaction()
            and not (_SESSION_STATE and con in _SESSION_STATE))


_RELEASING: set[asyncio.Task] = set()  # referenced until done (the loop holds tasks weakly)


def release_later(pool: asyncpg.Pool, conn) -> None:
    """Give a connection back to its pool from a callback, where no one can await it."""
    task = asyncio.get_running_loop().create_task(pool.release(conn))
    _RELEASING.add(task)
    task.add_done_callback(_RELEASING.discard)


async def create_pool(config: Config, dsn: str, min_size: int | None = None) -> asyncpg.Pool:
    """min_size=0: connect on first use only (a standby may be down when the service starts)."""
    return await asyncpg.create_pool(
        dsn,
        min_size=config.pool_min if min_size is None else min_size,
        max_size=config.pool_max,
        init=init_connection,
        reset=_reset_connection,
        # Every wait on the database is bounded: connecting (DB_CONNECT_TIMEOUT, else
        # asyncpg waits 60 s for a server that accepts TCP but never answers), acquiring
        # (DB_ACQUIRE_TIMEOUT, at the call sites), each statement (statement_timeout on
        # the server, lock waits included) and, should the server not answer at all, on
        # the client one second later (command_timeout).
        timeout=config.db_connect_timeout,
        command_timeout=config.statement_timeout_ms / 1000 + 1,
        server_settings={
            "statement_timeout": str(config.statement_timeout_ms),
            # A client gone quiet inside a transaction (a bug, a stuck task) loses its
            # connection instead of holding it and its locks for ever.
            "idle_in_transaction_session_timeout": str(config.idle_in_transaction_timeout_ms),
            "application_name": "pipeline-runs",
        },
    )


async def close_pool(pool: asyncpg.Pool, timeout: float) -> None:
    """Close gracefully; a database that does not answer the goodbye gets its sockets cut."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("closing the pool failed (%s); terminating it", type(exc).__name__)
        pool.terminate()
