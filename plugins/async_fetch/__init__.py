"""The seed's "Async programming" example: an async entry doing I/O with aiohttp.

Entries: `async_task(url)` -> `{"data": <the response's JSON>}`.
The entry body is copied unchanged from advanced-topics.md.
"""

import aiohttp

from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry


@neko_plugin
class AsyncFetchPlugin(NekoPluginBase):
    """Runs on the worker's event loop; no thread is blocked while the request is in flight."""

    @plugin_entry(id="async_task")
    async def async_task(self, url: str, **_):
        # The seed's text, kept verbatim, nested `async with` included.
        async with aiohttp.ClientSession() as session:  # noqa: SIM117
            async with session.get(url) as response:
                return {"data": await response.json()}
