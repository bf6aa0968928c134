"""Fault: the plugin's package cannot be imported.

The import below raises ModuleNotFoundError (an ImportError) while the worker loads the
plugin, before the handshake, on every attempt. The manifest allows 2 restarts in 60 s, so
the slot must try three workers in all and then report the plugin FAILED, with the import
error in its last error, instead of restarting forever.
"""

import this_module_does_not_exist_xyz  # noqa: F401  # the fault: this import always fails

from worker.sdk import NekoPluginBase, plugin_entry


# Never reached; it is what the manifest's entry names, so the only failure is the import.
class ImportErrorPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"
