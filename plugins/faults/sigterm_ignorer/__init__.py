"""Fault: a worker that will not stop.

The startup hook ignores SIGTERM (sync startup hooks run on the main thread, where
signal.signal() is allowed), and the shutdown hook blocks forever. So stop() gets no reply
to its shutdown message within the manifest's shutdown_timeout (0.5 s), SIGTERM does
nothing, and only the escalation to SIGKILL ends the worker.
"""

import signal
import threading

from worker.sdk import NekoPluginBase, lifecycle, plugin_entry


class SigtermIgnorerPlugin(NekoPluginBase):
    @lifecycle(id="startup")
    def ignore_sigterm(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    @lifecycle(id="shutdown")
    def block_forever(self):
        threading.Event().wait()

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"
