"""Idempotency-Key on POSTs: the key and the write commit in one transaction.

With the header, the wrapped handler runs on one connection inside one transaction whose
first statement claims the key (app/idempotency.py); `web.handlers.common.connection` hands the
handler that connection. A success stores its response in the same transaction; an error
rolls everything back, key included, so a retry executes again. A key already committed
answers its stored response (same status, body and ETag) if the request is the same one,
else 422. A concurrent request with the same key waits on the key's row until the first
commits, so the two never both execute.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re

from aiohttp import web

from service.domain.errors import BadRequest, Unprocessable
from service.app import idempotency as claims
from service.app.outages import translated
from service.web.keys import CONFIG, PARSED, POOL, PRINCIPAL

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEPT_HEADERS = ("Content-Type", "ETag", "Location")  # replayed with the stored body
# Printable ASCII; no space at either end (HTTP strips it, so it is not part of the key).
KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
_KEY_OK = re.compile(KEY_PATTERN)

# The connection (in its transaction) of a keyed request, for web.handlers.common.connection.
TX_CONNECTION = web.RequestKey("idempotent_connection", object)

HEADER_DOC = {
    "in": "header", "name": KEY_HEADER, "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": KEY_PATTERN},
    "description": "Makes retries safe: the first successful response to this key (in the "
                   "caller's enterprise, for 24 hours) is answered again, with nothing "
                   "written; the same key with a different request is a 422. 1-255 "
                   "printable ASCII characters (e.g. a UUID).",
}


class _RollBack(Exception):
    def __init__(self, response: web.StreamResponse):
        self.response = response


def idempotent(handler):
    """Wrap a POST handler so an Idempotency-Key makes it execute at most once."""
    operation = f"{handler.__module__}.{handler.__qualname__}"

    @functools.wraps(handler)
    async def keyed(request: web.Request) -> web.StreamResponse:
        key = request.headers.get(KEY_HEADER)
        if key is None:
            return await handler(request)
        if not _KEY_OK.fullmatch(key):
            raise BadRequest(f"{KEY_HEADER} must be 1-255 printable ASCII characters")
        enterprise_id = request[PRINCIPAL].enterprise_id
        fingerprint = await _fingerprint(request, operation)
        config = request.app[CONFIG]
        try:
            with translated():
                async with request.app[POOL].acquire(timeout=config.pool_acquire_timeout) as conn:
                    async with conn.transaction():
                        stored = await claims.claim(conn, enterprise_id, key, request.method,
                                                   request.path, fingerprint)
                        if stored is not None:
                            return _replay(stored, fingerprint)
                        request[TX_CONNECTION] = conn
                        try:
                            response = await handler(request)
                        finally:
                            request.pop(TX_CONNECTION, None)
                        if response.status >= 400 or not isinstance(response, web.Response):
                            raise _RollBack(response)
                        headers = {h: response.headers[h] for h in KEPT_HEADERS
                                   if h in response.headers}
                        await claims.keep_response(conn, enterprise_id, key, response.status,
                                                   headers, response.body)
                        return response
        except _RollBack as rolled_back:
            return rolled_back.response

    return keyed


async def _fingerprint(request: web.Request, operation: str) -> bytes:
    """The operation, its path parameters and the body as canonical JSON."""
    raw = await request.read()  # already read (and validated as JSON) by the parser
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True) if raw.strip() else ""
    except (ValueError, RecursionError):
        body = raw.hex()
    params = {k: str(v) for k, v in request[PARSED].get("match_info", {}).items()}
    text = json.dumps([request.method, operation, params, body], sort_keys=True)
    return hashlib.sha256(text.encode()).digest()


def _replay(stored, fingerprint: bytes) -> web.Response:
    if bytes(stored["fingerprint"]) != fingerprint:
        raise Unprocessable(
            f"this {KEY_HEADER} was used for a different request",
            content={"first_request": {"method": stored["method"], "path": stored["path"]}})
    headers = {**(stored["headers"] or {}), REPLAYED_HEADER: "true"}
    return web.Response(body=bytes(stored["body"]), status=stored["status"], headers=headers)
