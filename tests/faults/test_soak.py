"""Leak soak: hundreds of worker replacements must leave the supervisor's process
as it was: the same open fds, the same threads, one child (the live worker) and
about the same resident memory.

Each cycle ends a worker (SIGKILL, or `restart()`), waits for the plugin to run
in a new worker, and makes one call that must reach it. The baseline is taken
after a warm-up, once the caches that fill on first use (imports, the log file,
the executor's threads, the allocator's arenas) have filled.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from supervisor import Supervisor
from tests.faults.helpers import running_worker, supervising

pytestmark = pytest.mark.usefixtures("no_leaks")

WARMUP = 20
EXECUTOR_THREADS = 4
# A leak of one fd or one thread per cycle would be hundreds over the run; 2 leaves
# room for a descriptor or thread that is legitimately mid-replacement.
FD_SLACK = 2
THREAD_SLACK = 2
# Observed: resident memory grows by about 1 KB per cycle (the allocator settling).
# The bound is half of what a 100 KB-per-cycle leak would add over the measured
# cycles (9 MB for 180 kill cycles, 2 MB for 40 restart cycles), so such a
# leak breaks it twice over, while noise stays far below it.
RSS_SLACK_PER_CYCLE = 50 * 1024


@dataclass(frozen=True)
class Usage:
    fds: int
    threads: int         # threading.active_count(): Python threads
    os_threads: int      # psutil num_threads(): every thread of the process, C ones too
    children: list[int]  # recursive, zombies included
    rss: int

    def __str__(self) -> str:
        return (f"fds={self.fds} threads={self.threads} os_threads={self.os_threads} "
                f"children={self.children} rss={self.rss / 2**20:.1f} MiB")


def usage() -> Usage:
    me = psutil.Process()
    fds = len(os.listdir("/proc/self/fd"))  # includes the fd listdir itself opens, in both samples
    threads, os_threads = threading.active_count(), me.num_threads()
    children = sorted(child.pid for child in me.children(recursive=True))
    gc.collect()  # only for the memory reading: garbage awaiting collection is not a leak
    return Usage(fds, threads, os_threads, children, me.memory_info().rss)


async def start_every_executor_thread() -> None:
    """Give the loop a default executor whose threads all exist from now on.

    The supervisor scans for a dead worker's stray descendants with `to_thread`;
    the stock executor starts its threads lazily, one more whenever a job comes
    in before the last one's thread has marked itself idle, up to cpu_count + 4.
    That bounded growth is not a leak, so start them all before the baseline.
    """
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="soak-executor"))
    barrier = threading.Barrier(EXECUTOR_THREADS)  # passes only with every thread running at once
    await asyncio.gather(*(asyncio.to_thread(barrier.wait, 10) for _ in range(EXECUTOR_THREADS)))


async def kill_cycle(sup: Supervisor) -> int:
    old = sup.status("echo").pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    return await running_worker(sup, "echo", old)


async def restart_cycle(sup: Supervisor) -> int:
    old = sup.status("echo").pid
    await sup.restart("echo")
    return await running_worker(sup, "echo", old)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("cycle", "cycles"),
    [pytest.param(kill_cycle, 200, id="sigkill"), pytest.param(restart_cycle, 60, id="restart")],
)
async def test_replacing_workers_leaks_nothing(
    tmp_path: Path, cycle: Callable[[Supervisor], Awaitable[int]], cycles: int
) -> None:
    await start_every_executor_thread()
    runtime = {"echo": {"max_restarts": cycles + 10, "restart_window": 60}}
    async with supervising(tmp_path, ["echo"], runtime) as sup:
        baseline: Usage | None = None
        started = time.monotonic()
        for n in range(1, cycles + 1):
            pid = await cycle(sup)
            assert await sup.call("echo", "pid", timeout=10) == pid, f"cycle {n}: the call missed worker {pid}"
            if n == WARMUP:
                baseline = usage()
                started = time.monotonic()
        assert baseline is not None
        final = usage()
        elapsed = time.monotonic() - started
        measured = cycles - WARMUP
        status = sup.status("echo")
        report = f"after {measured} cycles in {elapsed:.1f} s: baseline {baseline}; final {final}"
        print(report)
        assert final.fds <= baseline.fds + FD_SLACK, report
        assert final.threads <= baseline.threads + THREAD_SLACK, report
        assert final.os_threads <= baseline.os_threads + THREAD_SLACK, report
        assert final.children == [status.pid], report
        assert final.rss - baseline.rss <= RSS_SLACK_PER_CYCLE * measured, report
        if cycle is kill_cycle:
            assert status.restarts == cycles, report
