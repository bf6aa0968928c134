"""The worker's entry threads: bounded, cancellable before a job starts, finished ids reported."""

from __future__ import annotations

import asyncio
import threading

from worker.pool import EntryThreads


async def test_jobs_run_at_most_max_threads_at_once_and_finish_reported() -> None:
    loop = asyncio.get_running_loop()
    finished: list[int] = []
    all_done = asyncio.Event()
    release = threading.Event()
    running = 0
    peak = 0
    lock = threading.Lock()

    def report(ids: list[int]) -> None:
        finished.extend(ids)
        if len(finished) == 6:
            all_done.set()

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    pool = EntryThreads(2, loop, report, lambda exc: None)
    for call_id in range(6):
        pool.submit(call_id, job)
    release.set()
    async with asyncio.timeout(5):
        await all_done.wait()
    assert sorted(finished) == list(range(6))
    assert peak <= 2
    assert pool._threads == 2


async def test_a_job_cancelled_before_it_starts_never_runs() -> None:
    loop = asyncio.get_running_loop()
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []
    finished: list[int] = []
    first_done = asyncio.Event()

    def report(ids: list[int]) -> None:
        finished.extend(ids)
        first_done.set()

    def blocker() -> None:
        started.set()
        release.wait(5)

    pool = EntryThreads(1, loop, report, lambda exc: None)
    pool.submit(1, blocker)
    pool.submit(2, lambda: ran.append("cancelled job"))
    assert await asyncio.to_thread(started.wait, 5)
    assert pool.cancel(2) is True
    assert pool.cancel(1) is False  # already running: only a thread can end it
    release.set()
    async with asyncio.timeout(5):
        await first_done.wait()
    pool.submit(3, lambda: ran.append("next job"))
    async with asyncio.timeout(5):
        while 3 not in finished:
            first_done.clear()
            await first_done.wait()
    assert ran == ["next job"]
    assert 2 not in finished


async def test_an_escaping_exception_is_handed_over_and_the_thread_goes_on() -> None:
    loop = asyncio.get_running_loop()
    escaped: list[BaseException] = []
    finished: list[int] = []
    done = asyncio.Event()

    def report(ids: list[int]) -> None:
        finished.extend(ids)
        if len(finished) == 2:
            done.set()

    def broken() -> None:
        raise MemoryError("in the answer")

    pool = EntryThreads(1, loop, report, escaped.append)
    pool.submit(1, broken)
    pool.submit(2, lambda: None)
    async with asyncio.timeout(5):
        await done.wait()
    assert [type(exc) for exc in escaped] == [MemoryError]
    assert sorted(finished) == [1, 2]
