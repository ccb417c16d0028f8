"""The enterprise change feed: a read from a position, and the long-poll that waits for one
(the SSE stream reads it too).

A waiting long-poll re-reads only when woken for its enterprise (infra/feedwait.py), from
where its previous read stopped: a filter matching nothing never rescans what it examined.
"""
from __future__ import annotations

import time
from typing import Callable

from service.store import events
from service.store.events import FeedPage

__all__ = ["FeedPage", "read", "wait"]


async def read(connect: Callable, enterprise_id: str, *, after: int, limit: int,
               scan_cap: int, **filters) -> FeedPage:
    """Events after `after`; filters: pipeline_id, run_id, type_, actor, since, until.

    connect(): a pooled connection's async context manager (none is held while waiting).
    """
    async with connect() as conn:
        return await events.feed(conn, enterprise_id, after=after, limit=limit,
                                 scan_cap=scan_cap, **filters)


async def wait(connect: Callable, waiters, enterprise_id: str, *, after: int, wait: float,
               limit: int, scan_cap: int, on_woken: Callable[[], None] | None = None,
               **filters) -> FeedPage:
    """read(), waiting up to `wait` seconds while there is nothing after `after` yet.

    on_woken(): called when a commit woke the wait, before the read it causes.
    """
    deadline = time.monotonic() + wait
    while True:
        # Subscribe before reading, so a commit landing between read and wait wakes us.
        with waiters.subscribe(enterprise_id) as woken:
            page = await read(connect, enterprise_id, after=after, limit=limit,
                              scan_cap=scan_cap, **filters)
            remaining = deadline - time.monotonic()
            # Not exhausted: a filtered read hit its scan cap; the caller resumes from there.
            if page.events or not page.exhausted or remaining <= 0 or waiters.closing:
                return page
            after = page.next_after
            await waiters.wait(woken, remaining)
            if woken.is_set() and on_woken is not None:
                on_woken()
