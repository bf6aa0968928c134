"""The resource watcher: one periodic look at every live worker's process tree.

Each tick reads the process table once (off the event loop), measures each
watched worker's tree (resident memory, CPU time, process count) and hands the
result to the worker's handle, which keeps the tree as a snapshot (to find
orphans if the worker dies on its own) and kills a worker over its limits.

The ticks are a sampling period, not synchronisation: a limit is enforced
within one period plus the time to measure. The kernel backstops in the worker
(RLIMIT_DATA, RLIMIT_CPU) catch what grows faster than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import psutil

from supervisor import containment
from supervisor.containment import TreeUsage

DEFAULT_WATCH_INTERVAL = 0.25

logger = logging.getLogger("supervisor.watch")


class Watched(Protocol):
    """What the watcher needs of a worker handle."""

    @property
    def watch_target(self) -> psutil.Process | None: ...

    def known_processes(self) -> dict[int, psutil.Process]: ...

    @property
    def memory_limit(self) -> int | None: ...

    def observe(self, usage: TreeUsage) -> None: ...


class ResourceWatcher:
    def __init__(self, interval: float = DEFAULT_WATCH_INTERVAL) -> None:
        self.interval = interval
        self._watched: set[Watched] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, handle: Watched) -> None:
        self._watched.add(handle)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="resource-watcher")

    def unwatch(self, handle: Watched) -> None:
        self._watched.discard(handle)

    async def close(self) -> None:
        self._watched.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._watched:
            try:
                handles = list(self._watched)
                looks = [(handle.watch_target, handle.known_processes(), handle.memory_limit) for handle in handles]
                usages = await loop.run_in_executor(None, _measure_all, looks)
                for handle, usage in zip(handles, usages, strict=True):
                    if usage is not None and handle in self._watched:
                        try:
                            handle.observe(usage)
                        except Exception:  # one handle's trouble must not skip the others' limits
                            logger.exception("the resource watcher failed to apply a look")
            except Exception:
                # Limits go unenforced while this fails: say so loudly, and keep trying.
                logger.exception("the resource watcher failed a look at the workers")
            await asyncio.sleep(self.interval)  # the sampling period


def _measure_all(looks: list[tuple[psutil.Process | None, dict[int, psutil.Process], int | None]]) -> list[TreeUsage | None]:
    parents = containment.parent_map()
    return [
        containment.measure(target, parents, known, limit) if target is not None else None
        for target, known, limit in looks
    ]
