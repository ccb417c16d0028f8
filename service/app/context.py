"""What every use case is given: who acts (Actor) and where it may write (a Db)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, AsyncContextManager, AsyncIterator, Protocol

import asyncpg

from service.domain import lifecycle


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: the enterprise, the token's name and id, the request (its id
    and, when it is traced, its trace's id: infra/tracing.py)."""

    enterprise_id: str
    name: str
    token_id: int | None
    request_id: str | None = None
    trace_id: str | None = None

    def event_data(self, reason: str | None = None) -> dict[str, Any]:
        """What an event this actor causes carries besides its columns (the ONE place)."""
        data: dict[str, Any] = {}
        if self.request_id:
            data["request_id"] = self.request_id
        if self.trace_id:
            data["trace_id"] = self.trace_id
        if reason:
            data["reason"] = reason
        return data


def system(enterprise_id: str) -> Actor:
    """The service itself (the timeout sweeper): actor `system`, no token."""
    return Actor(enterprise_id, lifecycle.SYSTEM, None)


class Db(Protocol):
    """Where a use case gets its connection, and the group commit it may share (or None:
    inside a caller's transaction, where a change must run on that transaction's connection)."""

    group: Any

    def connection(self) -> AsyncContextManager[asyncpg.Connection]: ...

    def saw(self, position: int | None, announced: bool = False) -> None:
        """The answer reflects the database up to `position` (a write's commit, read
        elsewhere than on connection()'s connections: the group commit's); `announced`: its
        feed wake-up went out with that read (app/groupcommit.py)."""


class OnConnection:
    """A Db over a connection the caller holds (the sweeper, the CLI, tests)."""

    group = None

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    def saw(self, position: int | None, announced: bool = False) -> None:
        pass  # no answer to carry it

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        yield self.conn
