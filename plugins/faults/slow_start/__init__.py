"""Fault: a plugin that is slow to construct.

`__init__` sleeps for the number of seconds in `delay.txt` beside plugin.toml, else 1.0 s,
before the worker can report ready. With the manifest's `timeout = 5`, a delay.txt above 5
makes every start miss its deadline; below it, start() just takes that long. The sleep is
the plugin's misbehaviour, not test synchronisation.
"""

import time

from worker.sdk import NekoPluginBase, plugin_entry

DEFAULT_DELAY = 1.0


class SlowStartPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        delay_file = ctx.config_path.parent / "delay.txt"
        self.delay = float(delay_file.read_text()) if delay_file.exists() else DEFAULT_DELAY
        time.sleep(self.delay)

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="delay", description="The start-up delay this worker took, in seconds.")
    def get_delay(self, **_):
        return self.delay
