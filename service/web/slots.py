"""Pool slots handed out round-robin across enterprises (handlers/common.py connection()).

A request takes a slot before asking the pool for a connection. While slots are free it
takes one at once. When all are taken it queues under its enterprise, and each released
slot goes to the enterprise next in turn (the first waiter of each enterprise, enterprises
in rotation), not to the oldest waiter overall: an enterprise flooding the service queues
behind itself, and another enterprise's request gets the next slot but a few.
Within an enterprise the order stays first come, first served.
"""
from __future__ import annotations

import asyncio
from collections import deque


class FairSlots:
    __slots__ = ("_free", "_queues")

    def __init__(self, slots: int):
        self._free = slots
        # Enterprise -> its waiters. Insertion order is the rotation: the enterprise served
        # goes to the back when it still has waiters.
        self._queues: dict[str, deque[asyncio.Future]] = {}

    def locked(self) -> bool:
        """True when an acquire() would wait."""
        return self._free == 0 or bool(self._queues)

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, key: str, timeout: float | None = None) -> None:
        """A slot; waiting at most `timeout` seconds (then TimeoutError)."""
        if self._free > 0 and not self._queues:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(waiter)
        # A plain timer on the waiter, not asyncio.timeout(): a third of the cost, and
        # almost every request under load waits here.
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot while being cancelled: pass it on
            else:
                self._forget(key, waiter)
            raise
        except TimeoutError:
            self._forget(key, waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def release(self) -> None:
        queues = self._queues
        while queues:
            key = next(iter(queues))
            queue = queues.pop(key)
            waiter = queue.popleft()
            if queue:
                queues[key] = queue  # back of the rotation
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1

    def _forget(self, key: str, waiter: asyncio.Future) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._queues[key]


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():  # a waiter already handed its slot keeps it
        waiter.set_exception(TimeoutError("no pool slot within the acquire timeout"))
