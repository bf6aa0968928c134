"""A healthy plugin, the baseline for the fault matrix and the integration tests.

Entries: `echo(value)` / `aecho(value)` return `value` (sync, on a worker thread / async, on
the event loop); `sleep(seconds)` / `asleep(seconds)` take that long and return `seconds`, to
test timeouts, cancellation and concurrency limits; `pid()` is the worker's os.getpid(), to
tell workers apart across restarts; `whoami()` is `{"env": ..., "cwd": ...}` as the worker
sees them.
"""

import asyncio
import os
import time

from worker.sdk import NekoPluginBase, plugin_entry


class EchoPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="echo", description="Return `value` unchanged (sync).")
    def echo(self, value, **_):
        return value

    @plugin_entry(id="aecho", description="Return `value` unchanged (async).")
    async def aecho(self, value, **_):
        return value

    @plugin_entry(id="sleep", description="Block a worker thread for `seconds`.")
    def sleep(self, seconds: float, **_):
        time.sleep(seconds)
        return seconds

    @plugin_entry(id="asleep", description="Await asyncio.sleep(`seconds`).")
    async def asleep(self, seconds: float, **_):
        await asyncio.sleep(seconds)
        return seconds

    @plugin_entry(id="pid", description="The worker's process id.")
    def pid(self, **_):
        return os.getpid()

    @plugin_entry(id="whoami", description="The worker's environment and working directory.")
    def whoami(self, **_):
        return {"env": dict(os.environ), "cwd": os.getcwd()}

    @plugin_entry(id="repeat", description="`value` repeated `times` times (a large result on demand).")
    def repeat(self, value, times: int, **_):
        return value * times
