"""Fault: a plugin that leaves processes of its own behind.

Each spawn starts two `sleep 600` children of the worker: one in the worker's process group,
one in a new session (`start_new_session=True`), which a kill of the worker's process group
does not reach. Both inherit the worker's stdin/stdout/stderr on purpose: a grandchild
holding the pipes open means EOF on them does not prove the worker is dead.

- `spawn()` returns `{"pids": [in_group, new_session]}`.
- `spawn_and_crash()` spawns the same two, writes their pids to `pids.txt` beside
  plugin.toml (one per line, same order), then exits the worker with status 5.
"""

import os
import subprocess

from worker.sdk import NekoPluginBase, plugin_entry


class GrandchildPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.pids_file = ctx.config_path.parent / "pids.txt"
        # Keep the Popen objects: a collected Popen of a running child warns (ResourceWarning).
        self._children = []

    def _spawn(self):
        in_group = subprocess.Popen(["sleep", "600"])
        new_session = subprocess.Popen(["sleep", "600"], start_new_session=True)
        self._children += [in_group, new_session]
        return [in_group.pid, new_session.pid]

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="spawn", description="Start two sleep 600 children; return their pids.")
    def spawn(self, **_):
        return {"pids": self._spawn()}

    @plugin_entry(id="spawn_and_crash", description="Spawn, write pids.txt, then os._exit(5).")
    def spawn_and_crash(self, **_):
        pids = self._spawn()
        # Written in full before the exit; the caller only reads it after the call has failed.
        self.pids_file.write_text("".join(f"{pid}\n" for pid in pids))
        os._exit(5)
