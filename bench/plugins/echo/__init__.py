from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry


@neko_plugin
class EchoPlugin(NekoPluginBase):
    @plugin_entry(id="echo", description="Return `value` (sync entry: runs on the worker's thread pool).")
    def echo(self, value=None, **_):
        return value

    @plugin_entry(id="aecho", description="Return `value` (async entry: runs on the worker's event loop).")
    async def aecho(self, value=None, **_):
        return value
