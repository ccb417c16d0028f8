"""What every resource module shares: the operation decorator, paging, request context."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable

import asyncpg
from aiohttp import web
from aiohttp_apispec import docs, json_schema, match_info_schema, querystring_schema

from ..http.auth import requires
from ..http.envelope import envelope
from ..http.idempotency import HEADER_DOC, TX_CONNECTION, idempotent as _idempotent
from ..http.keys import CONFIG, PARSED, POOL, PRINCIPAL, REQUEST_ID, Principal
from ..store.errors import translated
from . import schemas

_ERRORS = {
    400: "Invalid input: content.errors has the field messages",
    401: "Missing or unknown token",
    403: "The token lacks the required scope",
    404: "Not found in the caller's enterprise (or malformed id)",
    409: "Illegal status change: content names the current and requested status",
    412: "If-Match does not match the run's current version",
    413: "Request body larger than 1 MiB",
    414: "URL (path and query) longer than 8190 bytes",
    415: "Request body is not JSON (Content-Type application/json)",
    422: "Idempotency-Key already used for a different request",
    500: "Unexpected failure (logged with the request id)",
    503: "Database unavailable; retry",
}
_COMMON = (400, 401, 403, 404, 414, 500, 503)


def operation(*, scope: str, summary: str, tag: str, response: type, path: type | None = None,
              query: type | None = None, body: type | None = None, errors: tuple[int, ...] = (),
              description: str | None = None, headers: list[dict] | None = None,
              idempotent: bool = False) -> Callable:
    """Document, validate and protect one handler in a single declaration.

    idempotent: the handler honours an Idempotency-Key header (http/idempotency.py).
    """
    if idempotent:
        headers, errors = [*(headers or []), HEADER_DOC], (*errors, 422)
    if body is not None:  # answered before the handler runs (aiohttp, http/parser.py)
        errors = (*errors, 413, 415)
    responses: dict[int | str, dict[str, Any]] = {
        200: {"schema": response, "description": "Success"},
    }
    for code in sorted({*_COMMON, *errors}):
        responses[code] = {"schema": schemas.ErrorEnvelope, "description": _ERRORS[code]}

    def wrap(handler):
        if idempotent:
            handler = _idempotent(handler)
        handler = requires(scope)(handler)
        handler = docs(tags=[tag], summary=summary, description=description or summary,
                       security=[{"SCAPIAuthToken": []}], responses=responses,
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


def path(request: web.Request) -> dict[str, Any]:
    return request[PARSED]["match_info"]


def query(request: web.Request) -> dict[str, Any]:
    return request[PARSED]["querystring"]


def body(request: web.Request) -> dict[str, Any]:
    return request[PARSED]["json"]


def page(request: web.Request, total: int, items: list, limit: int, offset: int,
         message: str = "OK") -> web.Response:
    """A list envelope; next/previous are absolute URLs keeping the other parameters."""

    def at(new_offset: int) -> str:
        return str(request.url.update_query(limit=limit, offset=new_offset))

    content = {
        "count": total,
        "next": at(offset + limit) if offset + limit < total else None,
        "previous": at(max(offset - limit, 0)) if offset > 0 else None,
        "results": items,
    }
    return envelope(content, message=message)


@contextlib.asynccontextmanager
async def connection(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; a database that does not answer becomes a 503.

    Under an Idempotency-Key: the request's own connection, inside its transaction.
    """
    config = request.app[CONFIG]
    shared = request.get(TX_CONNECTION)
    with translated():
        if shared is not None:
            yield shared
            return
        # asyncio.timeout, not acquire(timeout=): that one costs a task per request.
        pool = request.app[POOL]
        async with asyncio.timeout(config.pool_acquire_timeout):
            conn = await pool.acquire()
        try:
            yield conn
        except asyncio.TimeoutError:
            # command_timeout: the server stopped answering. Drop the connection rather than
            # have release() wait up to command_timeout again for the query's cancellation.
            conn.terminate()
            raise
        finally:
            await pool.release(conn)
