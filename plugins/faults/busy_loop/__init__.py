"""Fault: sync entries that never return.

Python cannot interrupt a thread, so the only way out of either entry is to kill the worker:
a per-call timeout must end in CallTimeout and a new worker (the stuck thread would hold
its slot in the thread pool forever otherwise).
- `spin()` burns CPU in pure Python bytecode (it holds the GIL between switch intervals, so
  the worker's event loop still gets to run, only slowly).
- `sleep_forever()` blocks in time.sleep(), i.e. in C with the GIL released.
"""

import time

from worker.sdk import NekoPluginBase, plugin_entry


class BusyLoopPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="spin", description="Busy-loop forever in Python.")
    def spin(self, **_):
        while True:
            pass

    @plugin_entry(id="sleep_forever", description="Sleep forever, a minute at a time.")
    def sleep_forever(self, **_):
        while True:
            time.sleep(60)
