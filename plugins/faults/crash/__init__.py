"""Fault: the worker process exits in the middle of a call.

`os._exit()` skips every cleanup (no finally blocks, no atexit, no flush, no reply), exactly
like a plugin calling into a C library that aborts. The supervisor sees only EOF on the
worker's stdout and an exit status: the pending call must fail with WorkerCrashed, and the
slot must bring up a new worker on which `ping()` works.
"""

import os

from worker.sdk import NekoPluginBase, plugin_entry


class CrashPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(
        id="crash", description="Exit the worker with status `code`, from a worker thread."
    )
    def crash(self, code: int = 3, **_):
        os._exit(code)

    @plugin_entry(
        id="crash_async", description="Exit the worker with status `code`, from the event loop."
    )
    async def crash_async(self, code: int = 3, **_):
        os._exit(code)
