"""Fault: results msgpack cannot encode.

The worker fails encoding the reply, after the entry itself succeeded: the caller must get
an error naming the bad result (not a hang, not a crash), and the worker must stay up, so
`ok()` works on the same worker straight after.
"""

from worker.sdk import NekoPluginBase, plugin_entry


class UnserializablePlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="bad", description="A dict holding an arbitrary object.")
    def bad(self, **_):
        return {"obj": object()}

    @plugin_entry(id="bad_set", description="A set: msgpack has no set type.")
    def bad_set(self, **_):
        return {1, 2}

    @plugin_entry(id="ok", description="A plain 1.")
    def ok(self, **_):
        return 1
