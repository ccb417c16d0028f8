"""What the current unit of work appended to run_events, as the write paths report it.

The write paths know what they append (a single statement appends one event of a known
type; commit_drafts appends its drafts), so they report it here instead of anyone counting
rows afterwards. Whoever owns the unit of work (the HTTP middleware for a request, the
sweeper for one move) opens a collection, and counts it once the unit has committed.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

# (event type, count) pairs appended in the current unit of work; None outside one.
APPENDED: ContextVar[list | None] = ContextVar("appended_events", default=None)


def collection() -> list | None:
    """The current unit of work's collection (to hand to work done in another task)."""
    return APPENDED.get()


def note_appended(event_type: str, count: int = 1, into: list | None = None) -> None:
    """Called by the store's write paths for the events they append (`into`: a collection
    taken earlier with collection(), for work done on behalf of another task)."""
    pending = APPENDED.get() if into is None else into
    if pending is not None:
        pending.append((event_type, count))


@contextlib.contextmanager
def appended_events() -> Iterator[list]:
    """Collects what note_appended reports inside the block."""
    pending: list = []
    token = APPENDED.set(pending)
    try:
        yield pending
    finally:
        APPENDED.reset(token)
