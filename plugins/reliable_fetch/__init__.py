"""The seed's "Error handling with retry" example: tenacity's @retry under @plugin_entry.

Entries:
- `reliable_fetch(url)`: verbatim from advanced-topics.md. It imports `requests` inside the
  function, which is not a dependency of neko-supervisor: without it every attempt raises
  ModuleNotFoundError and the call fails after three attempts (waits of 4-10 s between them).
- `reliable_fetch_aiohttp(url)`: the same over aiohttp, and async, so the retry-over-a-coroutine
  path is exercised without `requests`; waits are 10-50 ms.
- `flaky(fail_times)`: no network. Raises RuntimeError while the plugin instance has seen at
  most `fail_times` attempts in total, then returns `{"attempts": n}` with that running total.
  The count lives on the instance (tenacity calls the method afresh for each attempt) and is
  never reset, so a new worker after a restart starts again from zero.
"""

import itertools

import aiohttp
from tenacity import retry, stop_after_attempt, wait_exponential

from worker.sdk import NekoPluginBase, plugin_entry


class ReliableFetchPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        # next() on itertools.count is atomic in CPython, so concurrent calls on worker
        # threads each get a distinct attempt number without a lock.
        self._flaky_attempts = itertools.count(1)

    # The seed's text, kept verbatim (the formatter would add a blank line after the import).
    # fmt: off
    @plugin_entry(id="reliable_fetch")
    @retry(stop=stop_after_attempt(3), wait=wait_exponential(min=4, max=10))
    def reliable_fetch(self, url: str, **_):
        import requests
        response = requests.get(url)
        response.raise_for_status()
        return {"data": response.json()}
    # fmt: on

    @plugin_entry(id="reliable_fetch_aiohttp")
    @retry(stop=stop_after_attempt(3), wait=wait_exponential(min=0.01, max=0.05))
    async def reliable_fetch_aiohttp(self, url: str, **_):
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            # An HTTP error status must raise, or there would be nothing to retry.
            response.raise_for_status()
            return {"data": await response.json()}

    @plugin_entry(id="flaky")
    @retry(
        stop=stop_after_attempt(3),
        wait=wait_exponential(min=0.01, max=0.05),
        reraise=True,  # the caller sees the RuntimeError itself, not tenacity's RetryError
    )
    def flaky(self, fail_times: int, **_):
        n = next(self._flaky_attempts)
        if n <= fail_times:
            raise RuntimeError(f"flaky: attempt {n} fails on purpose (fail_times={fail_times})")
        return {"attempts": n}
