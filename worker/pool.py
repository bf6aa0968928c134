"""The threads sync entries run on: at most `max_threads`, started as needed, kept.

What `concurrent.futures.ThreadPoolExecutor` did for us, minus what a call
does not need: no `Future` (a `Condition` and an `RLock` each), no Python-level
semaphore to find an idle thread. A job is a call id in a C `SimpleQueue`;
whoever takes its entry out of `_jobs` first owns it: a thread (it runs it) or
`cancel()` (it was cancelled before it started). Threads report the calls they
finished in batches: one wake-up of the loop for all that finished meanwhile,
not one per call.

Invariant: `_idle` = threads waiting for a job - jobs queued and not yet taken,
so a negative `_idle` means a job has no thread yet; a thread is started for it
(up to `max_threads`; beyond that it waits for a thread to come free, as the
executor's queue did).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]


class EntryThreads:
    def __init__(
        self,
        max_threads: int,
        loop: asyncio.AbstractEventLoop,
        on_finished: Callable[[list[int]], None],
        on_escaped: Callable[[BaseException], None],
    ) -> None:
        self.max_threads = max_threads
        self._loop = loop
        self._on_finished = on_finished  # on the loop thread, with the ids of calls that ended
        self._on_escaped = on_escaped    # on the pool thread, for an exception a job let out
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()  # guards _idle, _threads and _finished
        self._idle = 0
        self._threads = 0
        self._finished: list[int] = []

    def submit(self, call_id: int, job: Job) -> None:
        """Run `job` on a pool thread. `RuntimeError` if a thread it needs cannot be started
        (the job is queued by then: only a thread can take it)."""
        self._jobs[call_id] = job
        self._queue.put(call_id)
        with self._lock:
            self._idle -= 1
            start = self._idle < 0 and self._threads < self.max_threads
            if start:
                self._threads += 1
                name = f"neko-entry_{self._threads - 1}"
        if start:
            try:
                threading.Thread(target=self._serve, name=name, daemon=True).start()
            except BaseException:
                with self._lock:
                    self._threads -= 1
                raise

    def cancel(self, call_id: int) -> bool:
        """True if the call had not started: it never will (its id is reported as finished
        by the caller's own bookkeeping, not by a thread)."""
        return self._jobs.pop(call_id, None) is not None  # dict.pop is atomic: the thread or us

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            call_id = self._queue.get()
            job = self._jobs.pop(call_id, None)
            if job is None:
                continue  # cancelled before it started
            try:
                job()
            except BaseException as exc:
                self._on_escaped(exc)
            finally:
                # Reported whatever happened above, or the call would stay in flight for ever.
                with self._lock:
                    self._finished.append(call_id)
                    first = len(self._finished) == 1
                if first:
                    with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting
                        self._loop.call_soon_threadsafe(self._collect)

    def _collect(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        self._on_finished(finished)

