"""What every resource module shares: the operation decorator, paging, request context."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import asyncpg
from aiohttp import web
from aiohttp_apispec import docs, json_schema, match_info_schema, querystring_schema

from service.app import positions
from service.infra import replicas as replica_routing
from service.infra import db as dbinfra
from service.infra import logs
from service.web import links
from service.web.auth import CHALLENGE, SECURITY, requires
from service.web.consistency import REQUEST_DOC as TOKEN_DOC
from service.web.consistency import RESPONSE_DOC as TOKEN_RESPONSE_DOC
from service.web.consistency import ReplicaFailed, consistent
from service.web.envelope import envelope
from service.web.idempotency import HEADER_DOC, TX_CONNECTION, idempotent as _idempotent
from service.app.context import Actor
from service.web.keys import (
    CONFIG,
    CONSISTENCY,
    FEED_ANNOUNCED,
    GROUP_COMMIT,
    PARSED,
    POOL,
    POOL_SLOTS,
    PRINCIPAL,
    REPLICAS,
    REQUEST_ID,
    Principal,
    item,
)
from service.app.outages import UNAVAILABLE, translated
from service.web.slots import FairSlots
from service.web import schemas

_ERRORS = {
    400: "Invalid input: content.errors has the field messages",
    401: "No credentials, an unsupported scheme, or an unknown or revoked token (the "
         "message says which; unknown and revoked answer alike)",
    403: "The token lacks the required scope",
    404: "Not found in the caller's enterprise (or malformed id)",
    409: "Illegal status change: content names the current and requested status",
    412: "If-Match does not match the run's current version",
    413: "Request body larger than 1 MiB",
    414: "URL (path and query) longer than 8190 bytes",
    415: "Request body is not JSON (Content-Type application/json)",
    422: "Idempotency-Key already used for a different request",
    429: "Over this token's rate limit, or its cap of open long-polls, streams and exports "
         "(MAX_WAITS_PER_TOKEN): retry after Retry-After seconds",
    500: "Unexpected failure (logged with the request id)",
    503: "Database unavailable; retry",
}
_COMMON = (400, 401, 403, 404, 414, 429, 500, 503)
_HEADERS = {  # RFC 6750 3: the challenge of refusals
    401: {"WWW-Authenticate": {
        "schema": {"type": "string"},
        "description": f'`{CHALLENGE}`; with `error="invalid_token"` when the token given '
                       "is unknown or revoked (RFC 6750 3.1)"}},
    403: {"WWW-Authenticate": {
        "schema": {"type": "string"},
        "description": f'`{CHALLENGE}, error="insufficient_scope", scope="<scope>"`'}},
}
# The IETF RateLimit header fields (web/limits.py) on every answer to a token's request
# while its rate limit is on; a 429 adds Retry-After.
_RATE_HEADERS = {
    "RateLimit-Policy": {"description": 'The token\'s quota policy: `"token";q=<burst>;'
                         'w=<seconds to refill it>` (draft-ietf-httpapi-ratelimit-headers)',
                         "schema": {"type": "string"}},
    "RateLimit": {"description": 'Where it stands: `"token";r=<requests left>;t=<seconds '
                  'until the bucket is full again>`', "schema": {"type": "string"}},
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying",
                                "schema": {"type": "integer"}}}


def operation(*, scope: str, summary: str, tag: str, response: type, path: type | None = None,
              query: type | None = None, body: type | None = None, errors: tuple[int, ...] = (),
              description: str | None = None, headers: list[dict] | None = None,
              idempotent: bool = False, media_type: str | None = None,
              error_docs: dict[int, str] | None = None) -> Callable:
    """Document, validate and protect one handler in a single declaration.

    idempotent: the handler honours an Idempotency-Key header (web/idempotency.py).
    media_type: a success answer that is not a JSON envelope (e.g. text/event-stream);
    `response` then describes one message of it. error_docs: what an error code means
    here, where it differs from the usual (_ERRORS).
    A scope ending in ":read" makes it a read: a standby may answer it, and it honours a
    Consistency-Token header (web/consistency.py). Every success carries a token.
    """
    reads = scope.endswith(":read")
    if reads:
        headers = [*(headers or []), TOKEN_DOC]
    if idempotent:
        headers, errors = [*(headers or []), HEADER_DOC], (*errors, 422)
    if body is not None:  # answered before the handler runs (aiohttp, web/parser.py)
        errors = (*errors, 413, 415)
    responses: dict[int | str, dict[str, Any]] = {
        200: {"schema": response, "description": "Success",
              "headers": {**_RATE_HEADERS, **TOKEN_RESPONSE_DOC}},
    }
    if media_type is not None:
        responses[200] = {"description": "Success", "content": {media_type: {"schema": response}},
                          "headers": {**_RATE_HEADERS, **TOKEN_RESPONSE_DOC}}
    for code in sorted({*_COMMON, *errors}):
        responses[code] = {"schema": schemas.ErrorEnvelope,
                           "description": (error_docs or {}).get(code, _ERRORS[code])}
        if code == 429:
            responses[code]["headers"] = {**_RATE_HEADERS, **_RETRY_AFTER}
        elif code == 401:  # no token, hence no limit
            responses[code]["headers"] = _HEADERS[401]
        else:
            responses[code]["headers"] = {**_RATE_HEADERS, **_HEADERS.get(code, {})}

    def wrap(handler):
        if idempotent:
            handler = _idempotent(handler)
        handler = consistent(handler, read=reads, position_now=_position_now)
        handler = requires(scope)(handler)
        handler = docs(tags=[tag], summary=summary, description=description or summary,
                       security=SECURITY, responses=responses,
                       parameters=headers or [])(handler)
        if path is not None:
            handler = match_info_schema(path)(handler)
        if query is not None:
            handler = querystring_schema(query)(handler)
        if body is not None:
            handler = json_schema(body)(handler)
        return handler

    return wrap


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def request_id(request: web.Request) -> str:
    return request[REQUEST_ID]


def actor(request: web.Request) -> Actor:
    """The caller, as the use cases know it."""
    who = request[PRINCIPAL]
    return Actor(who.enterprise_id, who.name, who.token_id, request[REQUEST_ID],
                 logs.TRACE_ID.get())


def db(request: web.Request) -> "RequestDb":
    """The request's Db for a use case (app/context.py): its connections, its group commit."""
    return RequestDb(request)


class RequestDb:
    """connection() as below; the group commit unless the request has its own transaction
    (an Idempotency-Key), whose connection every write of the request must use."""

    __slots__ = ("request", "group")

    def __init__(self, request: web.Request):
        self.request = request
        self.group = (request.app.get(GROUP_COMMIT) if request.get(TX_CONNECTION) is None
                      else None)

    def connection(self) -> "_Connection":
        return _Connection(self.request, False)  # use cases write: the primary

    def saw(self, position: int | None, announced: bool = False) -> None:
        state = self.request.get(CONSISTENCY)
        if state is not None:
            state.saw(position)
        if announced:
            self.request[FEED_ANNOUNCED] = True


def path(request: web.Request) -> dict[str, Any]:
    return request[PARSED]["match_info"]


def query(request: web.Request) -> dict[str, Any]:
    return request[PARSED]["querystring"]


def body(request: web.Request) -> dict[str, Any]:
    return request[PARSED]["json"]


def page(request: web.Request, total: int, items: list, limit: int, offset: int,
         message: str = "OK") -> web.Response:
    """A list envelope; next/previous are absolute URLs keeping the other parameters.

    The run lists' shape (handlers/runs.py): these lists count exactly and page by offset
    only, so count_exact is true and next_cursor and previous_cursor null.
    """

    def at(new_offset: int) -> str:
        return str(links.here(request).update_query(limit=limit, offset=new_offset))

    content = {
        "count": total,
        "count_exact": True,
        "next": at(offset + limit) if offset + limit < total else None,
        "previous": at(max(offset - limit, 0)) if offset > 0 else None,
        "next_cursor": None,
        "previous_cursor": None,
        "results": items,
    }
    return envelope(content, message=message)


def connection(request: web.Request, read: bool | None = None) -> "_Connection":
    """A pooled connection; a database that does not answer becomes a 503.

    read: the statements only read, so a hot standby may run them (READ_DATABASE_URLS);
    by default, what the operation's scope says (@operation). Writes, and reads that need
    data newer than any standby has (Consistency-Token), run on the primary. Under an
    Idempotency-Key: the request's own connection, inside its transaction.
    """
    return _Connection(request, read)


async def _position_now(request: web.Request) -> None:
    """The primary's position now, for a response whose handler took no position itself."""
    async with _Connection(request, False):
        pass


class _Connection:
    """connection()'s context manager: a class, as every request of the hot path takes one.

    A request takes one of the pool's slots (web/slots.py: round-robin across
    enterprises, first come first served within one) before asking the pool. asyncpg's
    pool alone lets a newcomer take a connection just released to a waiter, which then
    queues again at the back: under load some requests waited a second (p99) while most
    took milliseconds.

    Before giving a connection back, it reads the WAL position the statements reflect
    (after them, so a write's commit is included): the response's Consistency-Token.
    """

    __slots__ = ("request", "conn", "shared", "state", "read", "replica")

    def __init__(self, request: web.Request, read: bool | None):
        self.request = request
        self.conn: asyncpg.Connection | None = None
        self.shared = item(request, TX_CONNECTION)
        self.state = state = item(request, CONSISTENCY)  # None outside @operation handlers
        self.read = (state is not None and state.read) if read is None else read
        self.replica = None

    async def __aenter__(self) -> asyncpg.Connection:
        if self.shared is not None:
            return self.shared  # its position is read after its commit (web/consistency.py)
        app = self.request.app
        replicas = app.get(REPLICAS)
        if replicas is not None and self.read and self.state is not None:
            if not self.state.primary_only:
                got = await replicas.acquire(self.state.required)
                if got is not None:
                    self.replica, self.conn = got
                    replicas.count_read(self.replica.name)
                    return self.conn
            replicas.count_read("primary")
        slots, pool = app[POOL_SLOTS], app[POOL]
        caller = item(self.request, PRINCIPAL)
        key = caller.enterprise_id if caller is not None else ""
        with translated():
            self.conn = await _acquire(slots, pool, key, app[CONFIG].pool_acquire_timeout)
        return self.conn

    async def __aexit__(self, kind, exc, tb) -> bool:
        conn = self.conn
        if conn is not None and self.replica is not None:
            return await self._exit_replica(conn, kind, exc)
        if conn is not None:
            failure = kind
            self.request[FEED_ANNOUNCED] = False  # a write here, if any, is not announced yet
            try:
                if kind is None and self.state is not None:
                    with translated():
                        try:
                            position = positions.noted_position(conn)
                            self.state.saw(position if position is not None else
                                           await positions.primary_position(conn))
                        except BaseException as err:
                            failure = type(err)  # the connection is given back all the same
                            raise
            finally:
                await self._give_back(conn, failure)
        return translated().__exit__(kind, exc, tb)  # the body's failure, translated too

    async def _give_back(self, conn: asyncpg.Connection, failure: type | None) -> None:
        """The connection to the next request waiting for a slot, else to the pool; the
        slot with it. After any failure only to the pool (which resets or drops it)."""
        app = self.request.app
        slots = app[POOL_SLOTS]
        handed = False
        try:
            with translated():
                if failure is not None:
                    dbinfra.drop_if_lost(conn, failure)
                pool = app[POOL]
                # Under load a request waits for a slot: it gets this connection with it.
                if failure is None and slots.has_waiters() and dbinfra.fit_to_pass_on(pool, conn):
                    handed = slots.hand_over(conn)
                if not handed:
                    await pool.release(conn)
        finally:
            if not handed:
                slots.release()

    async def _exit_replica(self, conn: asyncpg.Connection, kind, exc) -> bool:
        replicas, replica = self.request.app[REPLICAS], self.replica
        failure = exc if kind is not None and issubclass(kind, UNAVAILABLE) else None
        if failure is None and kind is None:
            try:
                self.state.saw(await positions.standby_position(conn))
            except UNAVAILABLE as position_failure:
                failure = position_failure
        await replicas.release(replica, conn, failure)
        if failure is not None:
            # The standby failed (down, restarted, a recovery conflict): the read runs again
            # on the primary (web/consistency.py); the probe brings the standby back.
            replica.leave(f"read failed: {type(failure).__name__}")
            replicas.fall_back(replica_routing.REPLICA_ERROR)
            raise ReplicaFailed() from failure
        return False  # any other failure (a 404, say) is the caller's, untouched


async def _acquire(slots: FairSlots, pool: asyncpg.Pool, key: str,
                   timeout: float) -> asyncpg.Connection:
    """A slot, then a connection, within `timeout` (DB_ACQUIRE_TIMEOUT) in all.

    Only what may wait pays for a timer: the slot's wait has its own; the pool waits only
    when it has no idle connection (the writers outside the slots, group commit and the
    webhook dispatcher, may hold them all), and then asyncio.timeout bounds it (not
    acquire(timeout=): that one costs a task). Taking an idle connection does not wait,
    and opening one is bounded by DB_CONNECT_TIMEOUT. A slot that comes with the
    connection of the request that gave it up (slots.hand_over) needs no pool at all.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    handed = await slots.acquire(key, timeout)
    if handed is not None:
        return handed
    try:
        if dbinfra.pool_has_free(pool):
            return await pool.acquire()
        async with asyncio.timeout_at(deadline):
            return await pool.acquire()
    except BaseException:
        slots.release()
        raise
