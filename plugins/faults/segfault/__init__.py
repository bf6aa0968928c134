"""Fault: the worker dies of a real SIGSEGV in the middle of a call.

`ctypes.string_at(0)` runs strlen() on a NULL pointer inside C code, so the kernel delivers
SIGSEGV: no Python exception, no reply. If the worker enabled faulthandler, a traceback goes
to stderr first; the process still dies of the signal (exit status -11 to the supervisor).
"""

import ctypes

from worker.sdk import NekoPluginBase, plugin_entry


class SegfaultPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="segfault", description="Dereference NULL in C: the process dies of SIGSEGV.")
    def segfault(self, **_):
        ctypes.string_at(0)
        return "unreachable"
