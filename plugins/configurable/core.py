"""ConfigurablePlugin: settings in a config.json beside plugin.toml, written on every change.

Entries: `get_config()` -> the config dict, `set_config(key, value)` -> the config after the change.
The class body is verbatim from advanced-topics.md. It has no @neko_plugin on purpose: the
manifest names it, and without the manifest's entry it is still found as the only subclass.
"""

import json

from worker.sdk import NekoPluginBase, plugin_entry


class ConfigurablePlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.config_file = ctx.config_path.parent / "config.json"
        self._load_config()

    def _load_config(self):
        if self.config_file.exists():
            self.config = json.loads(self.config_file.read_text())
        else:
            self.config = {"timeout": 30}

    def _save_config(self):
        self.config_file.write_text(json.dumps(self.config, indent=2))

    @plugin_entry(id="get_config", description="The current configuration.")
    def get_config(self, **_):
        return self.config

    @plugin_entry(id="set_config", description="Set one key and persist the configuration.")
    def set_config(self, key: str, value, **_):
        self.config[key] = value
        self._save_config()
        return self.config
