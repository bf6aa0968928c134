"""The seed's "Thread safety" example: state shared between entries and timers, under a lock.

Entries: `update(key, value)` -> `{"updated": True}` (verbatim from advanced-topics.md),
`get(key)` -> `{"value": <value or None>}`, `snapshot()` -> a copy of the whole dict.
Sync entries may run concurrently on worker threads, so every access takes the lock.
"""

import threading

from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry


@neko_plugin
class ThreadSafePlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self._lock = threading.Lock()
        self._shared_data = {}

    @plugin_entry(id="update")
    def update(self, key: str, value: str, **_):
        with self._lock:
            self._shared_data[key] = value
            return {"updated": True}

    @plugin_entry(id="get", description="Read one key; None when it was never set.")
    def get(self, key: str, **_):
        with self._lock:
            return {"value": self._shared_data.get(key)}

    @plugin_entry(id="snapshot", description="A copy of all keys and values.")
    def snapshot(self, **_):
        # A copy, so the caller's result cannot change under a later update().
        with self._lock:
            return dict(self._shared_data)
