"""The Consistency-Token header: read-your-writes across requests, replicas and services.

Every successful response carries `Consistency-Token`: for a write, the primary's WAL
insert position read after its commit (so it is past the commit record); for a read, the
position of the server that answered, read after the read's statements (so it covers all
they saw: a caller may hand it to another service). A read sent with a token is answered
from data at least that new (infra/replicas.py decides where). @operation wraps every
handler with `consistent`; handlers/common.connection() routes by the state kept here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from aiohttp import web

from service.domain.errors import BadRequest
from service.infra.replicas import format_token, parse_token
from service.web.keys import CONSISTENCY

HEADER = "Consistency-Token"
TOKEN_PATTERN = r"^1\.[0-9a-f]{1,16}$"
REQUEST_DOC = {
    "in": "header", "name": HEADER, "required": False,
    "schema": {"type": "string", "pattern": TOKEN_PATTERN},
    "description": "A token from an earlier response (of any call, or of another service "
                   "that called this one): the answer reflects at least everything that "
                   "token did, e.g. your own write. Opaque; the newest one you got is best.",
}
RESPONSE_DOC = {
    HEADER: {"schema": {"type": "string"},
             "description": "What this answer reflects (a write: its commit). Send it on "
                            "later reads to read at least this much."},
}


@dataclass(slots=True)
class Consistency:
    """One request's routing state."""

    read: bool  # an operation that only reads: a standby may answer it
    required: int = 0  # the WAL position the answer must reflect (from the request's token)
    seen: int = 0  # the position the answer reflects (becomes the response's token)
    primary_only: bool = False  # set when a standby failed this request: run it on the primary

    def saw(self, lsn: int | None) -> None:
        if lsn is not None and lsn > self.seen:
            self.seen = lsn


class ReplicaFailed(Exception):
    """A standby failed while serving a read; the read runs again on the primary."""


def require(request: web.Request, lsn: int) -> None:
    """From now on this request's reads must reflect `lsn` (a feed woken by a commit)."""
    state = request[CONSISTENCY]
    state.required = max(state.required, lsn)


def consistent(handler, *, read: bool, position_now):
    """Wrap a handler: parse the request's token, retry a failed standby read on the
    primary, answer the token. position_now(request) reads a position when the handler
    took none itself (a write that committed on another connection: group commit, an
    Idempotency-Key's transaction)."""

    @functools.wraps(handler)
    async def with_token(request: web.Request) -> web.StreamResponse:
        state = request[CONSISTENCY] = Consistency(read, _token_of(request) if read else 0)
        try:
            response = await handler(request)
        except ReplicaFailed:
            state.primary_only = True
            state.seen = 0
            response = await handler(request)
        if response.status < 400 and not response.prepared:
            if not state.seen:
                await position_now(request)
            # What the answer reflects, not what was asked: a token "from the future" (another
            # cluster's) or a wake-up's unknown position is never handed back.
            response.headers[HEADER] = format_token(state.seen)
        return response

    return with_token


def headers(request: web.Request) -> dict[str, str]:
    """The token header for an answer whose headers go out before the handler returns (a
    stream): what its reads so far reflect."""
    state = request.get(CONSISTENCY)
    return {HEADER: format_token(state.seen)} if state is not None and state.seen else {}


def _token_of(request: web.Request) -> int:
    raw = request.headers.get(HEADER)
    if raw is None:
        return 0
    try:
        return parse_token(raw)
    except ValueError:
        raise BadRequest(f"{HEADER} is not a token this service issued",
                         {"errors": {HEADER: ["not a token this service issued"]}}) from None
