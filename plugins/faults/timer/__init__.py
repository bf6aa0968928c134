"""A healthy plugin with a timer and an async startup hook.

`tick` runs every 50 ms and counts itself under a lock (timers and entries may run on
different threads); every third tick raises after counting, to show that a failing tick is
logged and the timer goes on. `ticks()` returns the count so far; `started()` returns
whether the async startup hook has run.
"""

import threading

from worker.sdk import NekoPluginBase, lifecycle, plugin_entry, timer_interval


class TimerPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self._lock = threading.Lock()
        self._ticks = 0
        self._started = False

    @lifecycle(id="startup")
    async def on_startup(self):
        self._started = True

    @timer_interval(id="tick", seconds=0.05)
    def tick(self):
        with self._lock:
            self._ticks += 1
            n = self._ticks
        if n % 3 == 0:
            raise RuntimeError(f"tick {n} fails on purpose; the timer must go on")

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="ticks", description="How many times the timer has fired, failures included.")
    def ticks(self, **_):
        with self._lock:
            return self._ticks

    @plugin_entry(id="started", description="Whether the async startup hook has run.")
    def started(self, **_):
        return self._started
