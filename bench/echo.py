"""The one interface every contestant of the benchmark implements: a warm single
worker process that echoes a value back.

    contestant = SomeEcho()
    await contestant.start()            # spawn and warm up one worker
    await contestant.call(value)        # one round trip, returns the value
    await contestant.burst(n, 64)       # n calls, at most 64 in flight at once
    contestant.worker_pid()             # the worker's pid (restart and memory figures)
    await contestant.close()

Blocking libraries (multiprocessing, pebble, ...) may block inside `call` and
`burst`: the benchmark runs one contestant at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Echo(Protocol):
    name: str

    async def start(self) -> None: ...

    async def call(self, value: Any) -> Any: ...

    async def burst(self, count: int, in_flight: int) -> None: ...

    def worker_pid(self) -> int | None: ...

    async def close(self) -> None: ...


async def gather_bounded(call: Any, count: int, in_flight: int, value: Any = b"x") -> None:
    """`count` awaits of `call(value)`, `in_flight` at a time, for asyncio contestants."""
    remaining = count

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call(value)

    await asyncio.gather(*(lane() for _ in range(min(in_flight, count))))


def echo(value: Any) -> Any:
    """What every peer's worker runs (importable by a child process by name)."""
    return value
