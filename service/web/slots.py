"""Pool slots handed out round-robin across enterprises (handlers/common.py connection()).

A request takes a slot before asking the pool for a connection. While slots are free it
takes one at once. When all are taken it queues under its enterprise, and each released
slot goes to the enterprise next in turn (the first waiter of each enterprise, enterprises
in rotation), not to the oldest waiter overall: an enterprise flooding the service queues
behind itself, and another enterprise's request gets the next slot but a few.
Within an enterprise the order stays first come, first served.

A slot may pass with its connection (hand_over): the waiter next in turn gets both, and
the connection skips the pool's release and acquire (a task and two futures a request,
the biggest share of the pool's cost under load).
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable


class FairSlots:
    __slots__ = ("_free", "_queues", "_give_back", "_deadlines", "_timer")

    def __init__(self, slots: int, give_back: Callable[[Any], None] | None = None):
        self._free = slots
        # Enterprise -> its waiters. Insertion order is the rotation: the enterprise served
        # goes to the back when it still has waiters.
        self._queues: dict[str, deque[asyncio.Future]] = {}
        # What to do with a connection handed to a waiter that was cancelled meanwhile and
        # that no other waiter takes: give it back to its pool.
        self._give_back = give_back
        # (deadline, waiter) in deadline order, and the one timer that expires them: a timer
        # per waiter (call_later, then cancel) cost more than the rest of a wait.
        self._deadlines: deque[tuple[float, asyncio.Future]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def locked(self) -> bool:
        """True when an acquire() would wait."""
        return self._free == 0 or bool(self._queues)

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, key: str, timeout: float | None = None) -> Any:
        """A slot; waiting at most `timeout` seconds (then TimeoutError). Returns the
        connection handed over with it (hand_over), else None."""
        if self._free > 0 and not self._queues:
            self._free -= 1
            return None
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(waiter)
        if timeout is not None:
            self._expire_at(loop, loop.time() + timeout, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._pass_on(waiter.result())  # handed a slot while being cancelled
            else:
                self._forget(key, waiter)
            raise
        except TimeoutError:
            self._forget(key, waiter)
            raise

    def release(self) -> None:
        """Give the slot back (its connection went back to the pool)."""
        waiter = self._next_waiter()
        if waiter is None:
            self._free += 1
        else:
            waiter.set_result(None)  # the slot passes straight to the waiter

    def hand_over(self, item: Any) -> bool:
        """Pass the slot and `item` (a connection) to the next waiter; False when no one
        waits (nothing changed: release the connection, then the slot)."""
        waiter = self._next_waiter()
        if waiter is None:
            return False
        waiter.set_result(item)
        return True

    def has_waiters(self) -> bool:
        return bool(self._queues)

    def _next_waiter(self) -> asyncio.Future | None:
        queues = self._queues
        while queues:
            key = next(iter(queues))
            queue = queues.pop(key)
            waiter = queue.popleft()
            if queue:
                queues[key] = queue  # back of the rotation
            if not waiter.done():
                return waiter
        return None

    def _pass_on(self, item: Any) -> None:
        if item is None:
            self.release()
        elif not self.hand_over(item):
            if self._give_back is not None:
                self._give_back(item)
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

    def _expire_at(self, loop: asyncio.AbstractEventLoop, deadline: float,
                   waiter: asyncio.Future) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():  # served: no longer timed
            deadlines.popleft()
        if deadlines and deadline < deadlines[-1][0]:
            # A shorter timeout than a waiter before it (callers pass the same one): its own.
            loop.call_at(deadline, _expire, waiter)
            return
        deadlines.append((deadline, waiter))
        if self._timer is None:
            self._timer = loop.call_at(deadlines[0][0], self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        now = loop.time() + 0.001  # timers may fire up to a clock tick early
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1].done()):
            _expire(deadlines.popleft()[1])
        if deadlines:
            self._timer = loop.call_at(deadlines[0][0], self._expire_due)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():  # a waiter already handed its slot keeps it
        waiter.set_exception(TimeoutError("no pool slot within the acquire timeout"))
