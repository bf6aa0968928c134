"""A plugin's `max_concurrency` places: a FIFO semaphore that can be taken without awaiting.

`asyncio.Semaphore` can only be taken by awaiting `acquire()`, a coroutine per
call even when a place is free. The slot's call path takes a free place
synchronously (`take_now`) and awaits `take()` only when it must queue.

A freed place goes straight to the first waiter still waiting, so a newcomer
never overtakes the queue (`take_now` fails while anyone waits); a waiter
cancelled after it was handed a place passes it on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class Places:
    """Loop thread only."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def locked(self) -> bool:
        """A caller would have to wait for a place."""
        return not self._free or bool(self._waiters)

    def take_now(self) -> bool:
        """Take a place if one is free and nobody waits for one; never waits."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a place, waiting in line for one if need be."""
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a place, but cancelled before we could use it
            else:
                with contextlib.suppress(ValueError):  # give_back() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """Free a place: to the first waiter still waiting, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
