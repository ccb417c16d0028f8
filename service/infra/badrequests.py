"""A request the HTTP parser refuses (a 64 KiB URL, a broken header) is one WARNING line.

aiohttp answers such a request 400 itself, before any of our code runs, and logs it on
`aiohttp.server` at ERROR with a traceback. Anyone can send one, unauthenticated, as often
as they like: a traceback per request would flood the log and read like our own failure.
"""
from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class BadRequestLines(logging.Filter):
    """On `aiohttp.server`: a parser refusal becomes one WARNING line, without traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            # The parser's message quotes up to 100 bytes of the refused input: repr-escaped,
            # so a client cannot write control characters or fake lines into our log.
            reason = (exc.message or "").splitlines()[0] if exc.message else ""
            record.msg, record.args = "refused a malformed HTTP request (%s): %r", (
                exc.code, reason[:200])
            record.exc_info = record.exc_text = None
        return True


def install() -> None:
    """Idempotent: setup_logging calls it each time."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLines) for f in server.filters):
        server.addFilter(BadRequestLines())
