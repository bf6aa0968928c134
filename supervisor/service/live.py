"""The live view: one sampler of the plugins' statuses, fanned out to every open event stream.

    GET /v1/events    text/event-stream; each event is `event: plugins` with the
                      JSON {"service": {...}, "plugins": [plugin rows]} of that moment

A sampler looks at `Supervisor.statuses()` every SAMPLE_INTERVAL and publishes
a snapshot when something a person watches changed (a state, a pid, a count,
a log line) or, for the slowly moving figures (uptime, memory), once every
REFRESH_INTERVAL; a crash therefore reaches the page within a quarter of a
second. A snapshot is encoded once, whatever the number of streams, and not
at all while none is open. A stream
only ever holds the newest snapshot: a slow client skips states, it never
makes the service buffer without bound. It also feeds the restart counts to
the call history, so the charts have them whether or not a page is open.

Browsers cannot put an Authorization header on `EventSource`, and the token
must never sit in a URL, so the page reads this stream with `fetch()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiohttp import web

from supervisor.service.history import CallHistory
from supervisor.service.views import plugin_summary
from supervisor.slot import PluginStatus

logger = logging.getLogger("supervisor.service")

SAMPLE_INTERVAL = 0.25
REFRESH_INTERVAL = 2.0
KEEPALIVE_INTERVAL = 15.0  # a comment line, so proxies and the browser see the stream alive

# What a person watches: a change in any of these is published at once.
WATCHED = ("state", "pid", "restarts", "error", "calls", "failures", "in_flight", "queued", "log_lines", "spare_pid")


class LiveFeed:
    def __init__(
        self,
        statuses: Callable[[], list[PluginStatus]],
        service: Callable[[], dict[str, Any]],
        history: CallHistory,
        sample_interval: float = SAMPLE_INTERVAL,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self._statuses = statuses
        self._service = service
        self._history = history
        self.sample_interval = sample_interval
        self.refresh_interval = refresh_interval
        self._latest: bytes | None = None
        self._watched: Any = None
        self._published_at = -float("inf")
        self._next = asyncio.Event()  # set, and replaced, at each publication
        self._streams = 0  # open streams: with none, a look only feeds the history
        self.closed = False

    def sample(self, force: bool = False) -> None:
        """Look once; publish if something watched changed, the refresh is due, or `force`."""
        statuses = self._statuses()
        for status in statuses:
            self._history.note_restarts(status.id, status.restarts)
        if not (force or self._streams):
            self._latest = None  # nobody watches: no snapshot to build, and the next stream takes a fresh one
            return
        rows = [plugin_summary(status) for status in statuses]
        service = self._service()
        watched = (service, [tuple(row[key] for key in WATCHED) for row in rows])
        now = time.monotonic()
        if not force and watched == self._watched and now - self._published_at < self.refresh_interval:
            return
        self._watched, self._published_at = watched, now
        self._latest = _event("plugins", {"service": service, "plugins": rows})
        self._wake()

    async def run(self) -> None:
        failing = False
        while not self.closed:
            try:
                self.sample()
                failing = False
            except Exception:
                # A bug here must not freeze every page silently, nor flood the log.
                if not failing:
                    logger.exception("the dashboard's live feed failed to sample the plugins")
                failing = True
            await asyncio.sleep(self.sample_interval)  # a sampling period, not a wait for something

    def close(self) -> None:
        """End every stream (the service is shutting down: they must not hold it open),
        each after one last snapshot: the page shows the service stopping, not a stale view."""
        try:
            self.sample(force=True)
        except Exception:
            logger.exception("the dashboard's live feed failed to sample the plugins")
        self.closed = True
        self._wake()

    async def snapshots(self) -> AsyncGenerator[bytes | None, None]:
        """The newest snapshot now, then each newer one as it comes; None when
        KEEPALIVE_INTERVAL passed without one. Ends when the feed closes."""
        self._streams += 1
        try:
            if self._latest is None:
                self.sample(force=True)
            while True:
                published = self._next
                assert self._latest is not None
                yield self._latest
                if published.is_set():
                    continue  # a newer one came while that one was being written
                if self.closed:
                    return
                while not published.is_set():
                    try:
                        async with asyncio.timeout(KEEPALIVE_INTERVAL):
                            await published.wait()
                    except TimeoutError:
                        yield None
        finally:
            self._streams -= 1

    def _wake(self) -> None:
        published, self._next = self._next, asyncio.Event()
        published.set()


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream_events(request: web.Request, feed: LiveFeed) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # a proxy in front must pass each event on at once
    })
    await response.prepare(request)
    # aclosing: a page that goes away stops counting as a watcher at once, not at garbage collection.
    with contextlib.suppress(ConnectionResetError):  # the page went away: nothing to answer
        async with contextlib.aclosing(feed.snapshots()) as snapshots:
            async for snapshot in snapshots:
                await response.write(snapshot if snapshot is not None else b": keepalive\n\n")
    return response
