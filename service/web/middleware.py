"""Request ids, and how errors become HTTP envelopes (web/observe.py catches them).

An error's `content` is always an object (`{}` when there is nothing to add), as Esper's
Error_4xx schemas type it; never null.
"""
from __future__ import annotations

import logging
import re
from random import getrandbits

from aiohttp import web

from service.domain.errors import DomainError, UriTooLong
from service.web.envelope import envelope

log = logging.getLogger(__name__)

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# The longest request target (path and query) answered; longer is a 414 envelope. aiohttp's
# own limit is the same by default, refused with a plain-text 400 before the app: the
# server raises it (runtime.PARSER_LIMITS) so that this limit is the one callers meet.
MAX_URL_BYTES = 8190


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-ID when it is sane, else a fresh one: 32 hex digits, a uuid4's
    size. An id names a request, it guards nothing: Python's generator (seeded from the OS,
    again in each forked worker) rather than a system call per request for os.urandom."""
    given = request.headers.get("X-Request-ID")
    if given is not None and _REQUEST_ID_OK.match(given):
        return given
    return getrandbits(128).to_bytes(16, "big").hex()


def check_url_length(target: str) -> None:
    # Characters first (cheap, and never more than the bytes); bytes when it may matter.
    if len(target) > MAX_URL_BYTES and len(target.encode(errors="surrogateescape")) > MAX_URL_BYTES:
        raise UriTooLong(f"request URL too long: at most {MAX_URL_BYTES} bytes")


def domain_error(exc: DomainError) -> web.Response:
    """A refusal the code chose (4xx, 503): its envelope, its headers."""
    content = {} if exc.content is None else exc.content
    return envelope(content, exc.status, exc.message, headers=exc.headers)


def http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own error (404, 405, 413 …) as an envelope; 405 keeps its Allow header."""
    response = envelope({}, exc.status, _http_message(exc))
    if exc.status == 405 and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def unknown_error(request_id: str) -> web.Response:
    """Unknown failure (call from an except block): full detail to the log with the request
    id, nothing to the caller."""
    log.exception("unhandled error", extra={"request_id": request_id})
    return envelope({}, 500, "internal server error")


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "not found"
    if exc.status == 413:
        return "request body too large"
    return exc.reason.lower() if exc.reason else "error"
