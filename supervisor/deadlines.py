"""Many call deadlines, one loop timer.

`asyncio.timeout_at` per call costs a `Timeout`, two coroutine steps and a
`TimerHandle` in the loop's heap (ordered there by a Python `__lt__`), and
almost every call ends long before its deadline, so nearly all of it is thrown
away (about 15 % of the supervisor's CPU per call in a fan-out). A slot keeps
the deadlines of its calls in one heap of `(when, seq, Deadline)` tuples
(compared in C) with one loop timer armed at the earliest of them.

A call that ends first leaves its entry in the heap, marked ended and holding
nothing (so a result is never kept alive by it); the heap is rebuilt once most
of it has ended, so it stays within about twice the calls in flight. The timer
is not moved when the earliest call ends: it fires at that stale time, finds
nothing due and re-arms itself at the earliest deadline still live.

An expiry runs at the turn of the loop where a `call_at(when)` timer would
have run, so a call times out exactly when it did under `timeout_at`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

# asyncio runs a timer due within its clock's resolution in the current turn; so do we.
CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
COMPACT_AT_LEAST = 64  # never rebuild a heap this small: a rebuild would cost more than it frees


class Deadline:
    """One call's deadline: `expire(*args)` runs when it passes, unless `Deadlines.remove()` came first."""

    __slots__ = ("args", "expire", "when")

    def __init__(self, when: float, expire: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.expire: Callable[..., None] | None = expire  # None once it has expired or been removed
        self.args = args

    @property
    def live(self) -> bool:
        return self.expire is not None


class Deadlines:
    """The deadlines of one slot's calls. Loop thread only."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()  # ties on `when` never compare two Deadlines
        self._live = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def __len__(self) -> int:
        """Deadlines still to come."""
        return self._live

    def add(self, when: float, expire: Callable[..., None], *args: Any) -> Deadline:
        """Run `expire(*args)` at loop time `when` (monotonic seconds), unless removed first."""
        deadline = Deadline(when, expire, args)
        heapq.heappush(self._heap, (when, next(self._seq), deadline))
        self._live += 1
        if self._timer is None or when < self._timer_when:
            self._arm(when)
        return deadline

    def remove(self, deadline: Deadline) -> None:
        """The call ended before its deadline (or is ending after it: then nothing happens)."""
        if deadline.expire is None:
            return
        deadline.expire = None
        deadline.args = ()
        self._live -= 1
        heap = self._heap
        if len(heap) > COMPACT_AT_LEAST and len(heap) > 2 * self._live:
            heap[:] = [item for item in heap if item[2].expire is not None]
            heapq.heapify(heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        assert self._loop is not None
        due = self._loop.time() + CLOCK_RESOLUTION
        heap = self._heap
        while heap and heap[0][0] <= due:
            deadline = heapq.heappop(heap)[2]
            expire, args = deadline.expire, deadline.args
            if expire is None:
                continue
            deadline.expire = None
            deadline.args = ()
            self._live -= 1
            try:
                expire(*args)
            except Exception as exc:  # one failed expiry must not keep the others from timing out
                self._loop.call_exception_handler({"message": "a call deadline's expiry failed", "exception": exc})
        while heap and heap[0][2].expire is None:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])
