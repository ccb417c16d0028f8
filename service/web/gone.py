"""Noticing that a client went away while its handler waits (a stream between events).

`serve` runs aiohttp without handler cancellation (a write's transaction is never cut
short by a closed socket), so nothing wakes a handler that waits when its client leaves.
aiohttp offers no callback for it; the transport it answers on is watched instead.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

POLL_SECONDS = 0.25  # how soon a departure is noticed; one cheap check per waiting handler


def is_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def until_gone(request: web.Request) -> None:
    """Return once the client's connection is closed."""
    while not is_gone(request):
        await asyncio.sleep(POLL_SECONDS)


async def wait_or_gone(request: web.Request, waiting) -> bool:
    """Await `waiting` (an awaitable) unless the client leaves first; True: it left."""
    wait, gone = asyncio.ensure_future(waiting), asyncio.ensure_future(until_gone(request))
    try:
        await asyncio.wait((wait, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wait, gone):
            task.cancel()
        await asyncio.gather(wait, gone, return_exceptions=True)
    return is_gone(request)
