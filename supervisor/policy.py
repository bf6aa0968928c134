"""When to restart: the restart budget and the backoff between failed starts.

Policy only; the slot asks and acts. Time comes from an injectable clock
(a callable returning monotonic seconds) so tests of "5 crashes in 60 s" do
not wait 60 s.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

import tenacity

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class FakeClock:
    """A clock a test moves by hand. Pass it as `Supervisor(clock=...)`: the restart
    budget reads it, and backoff between failed starts sleeps on it, which moves it
    forward at once instead of waiting. `advance()` moves it by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds!r})")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)  # still a turn of the loop, as a real sleep is


def sleep_of(clock: Clock) -> Sleep:
    """How to wait `seconds` by this clock: its own `sleep` if it has one (FakeClock), else asyncio's."""
    sleep = getattr(clock, "sleep", None)
    return sleep if callable(sleep) else asyncio.sleep

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 2.0


class RestartBudget:
    """More than `max_restarts` crashes within `window` seconds spends the budget."""

    def __init__(self, max_restarts: int, window: float, clock: Clock = time.monotonic) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.clock = clock
        self._crashes: collections.deque[float] = collections.deque()

    def record_crash(self) -> bool:
        """Count one crash now; True while the plugin may still be restarted."""
        now = self.clock()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - self.window:
            self._crashes.popleft()
        return len(self._crashes) <= self.max_restarts

    def reset(self) -> None:
        self._crashes.clear()

    @property
    def recent_crashes(self) -> int:
        return len(self._crashes)


class Backoff:
    """Delays between consecutive failed starts: exponential with jitter (tenacity),
    from `BACKOFF_INITIAL` up to `BACKOFF_MAX` seconds; a successful handshake resets it."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        # Spelled as a sum of two long-standing strategies: wait_exponential_jitter's
        # parameters changed names across tenacity releases.
        self._wait = tenacity.wait_exponential(multiplier=initial, max=maximum) + tenacity.wait_random(0, initial)
        self._maximum = maximum
        self._failures = 0

    def next_delay(self) -> float:
        self._failures += 1
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = self._failures
        return min(self._maximum, float(self._wait(state)))

    def reset(self) -> None:
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures
