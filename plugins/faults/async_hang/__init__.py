"""Fault: async entries that never return.

- `hang()` awaits an Event nobody sets: cancelling the task ends it cleanly, so a timeout
  or a cancel from the caller need not cost the worker.
- `hang_ignoring_cancel()` swallows CancelledError and goes back to waiting, so cancelling
  the task does nothing; the worker has to give up on it (or be killed) after a grace.
"""

import asyncio

from worker.sdk import NekoPluginBase, plugin_entry


class AsyncHangPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="hang", description="Await forever; cancellable.")
    async def hang(self, **_):
        await asyncio.Event().wait()

    @plugin_entry(
        id="hang_ignoring_cancel", description="Await forever; cancellation is swallowed."
    )
    async def hang_ignoring_cancel(self, **_):
        never = asyncio.Event()
        while True:
            try:
                await never.wait()
            except asyncio.CancelledError:
                # The misbehaviour under test: a plugin that refuses to be cancelled.
                self.logger.warning("hang_ignoring_cancel: cancelled, waiting again")
