"""Regressions for faults found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from supervisor import EntryFailed, PluginUnavailable, ResultNotSerializable, Supervisor
from tests.conftest import pid_alive
from tests.faults.helpers import supervising, wait_for
from tests.integration.helpers import make_plugin

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_a_cancelled_stop_still_stops_the_worker(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["busy_loop"], {"busy_loop": {"shutdown_timeout": 0.5}}) as sup:
        pid = sup.status("busy_loop").pid
        assert pid is not None
        hung = asyncio.create_task(sup.call("busy_loop", "sleep_forever", timeout=60))
        await wait_for(lambda: sup.status("busy_loop").in_flight == 1)
        with pytest.raises(TimeoutError):
            # The caller gives up on the stop (a client that hung up)...
            await asyncio.wait_for(sup.stop_plugin("busy_loop"), 0.2)
        # ...and a second stop joins the first instead of failing.
        await sup.stop_plugin("busy_loop")
        assert sup.status("busy_loop").state == "stopped"
        assert not pid_alive(pid)
        with pytest.raises(PluginUnavailable):
            await hung


async def test_an_unwritable_log_dir_does_not_hang_start_or_stop(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    async with asyncio.timeout(15), supervising(tmp_path, ["stray_output", "crash"], log_dir=not_a_dir / "logs") as sup:
        assert await sup.call("stray_output", "ping", timeout=5) == "pong"
        assert sup.status("stray_output").log_path is None  # fell back to memory
        await wait_for(lambda: "stray_output: noise at import time" in sup.logs("stray_output"))


async def test_cancelling_start_leaves_no_worker(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "quick", {"__init__.py": "from worker.sdk import NekoPluginBase\nclass P(NekoPluginBase): pass\n"})
    make_plugin(
        plugins,
        "slow",
        {"__init__.py": "import time\nfrom worker.sdk import NekoPluginBase\nclass P(NekoPluginBase):\n    def __init__(self, ctx):\n        super().__init__(ctx)\n        time.sleep(30)\n"},
    )
    sup = Supervisor(plugins, log_dir=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sup.start(), 1.0)
    # no_leaks checks that both workers are gone.


async def test_stop_interrupts_a_slow_start(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["slow_start"], auto_start=False) as sup:
        (Path(sup.status("slow_start").folder) / "delay.txt").write_text("4")
        starting = asyncio.create_task(sup.start_plugin("slow_start"))
        await sup.wait_for_state("slow_start", "starting", timeout=5)
        began = time.monotonic()
        await sup.stop_plugin("slow_start")
        assert time.monotonic() - began < 1.0
        await starting
        assert sup.status("slow_start").state == "stopped"


async def test_shutdown_hooks_run_even_with_a_call_in_flight(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    marker = plugins / "hooky" / "hook-ran"
    make_plugin(
        plugins,
        "hooky",
        {
            "__init__.py": (
                "import asyncio\n"
                "from worker.sdk import NekoPluginBase, plugin_entry, lifecycle\n"
                "class P(NekoPluginBase):\n"
                "    @plugin_entry\n"
                "    async def hang(self, **_):\n"
                "        await asyncio.Event().wait()\n"
                "    @lifecycle(id='shutdown')\n"
                "    def bye(self):\n"
                "        (self.ctx.config_path.parent / 'hook-ran').write_text('yes')\n"
            )
        },
        shutdown_timeout=2,
    )
    async with Supervisor(plugins, log_dir=False) as sup:
        hung = asyncio.create_task(sup.call("hooky", "hang", timeout=60))
        await wait_for(lambda: sup.status("hooky").in_flight == 1)
        began = time.monotonic()
        await sup.stop_plugin("hooky")
        # Half the shutdown_timeout for calls in flight, then the hook, then exit 0.
        assert time.monotonic() - began < 2.0
        last_exit = sup.status("hooky").last_exit
        assert last_exit is not None and last_exit.returncode == 0
        with pytest.raises(PluginUnavailable):
            await hung
    assert marker.read_text() == "yes"


async def test_a_signal_handler_that_logs_cannot_deadlock_the_worker(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(
        plugins,
        "sig",
        {
            "__init__.py": (
                "import signal\n"
                "from worker.sdk import NekoPluginBase, plugin_entry, lifecycle\n"
                "class P(NekoPluginBase):\n"
                "    @lifecycle(id='startup')\n"
                "    def install(self):\n"
                "        signal.signal(signal.SIGUSR1, lambda *a: self.logger.warning('got SIGUSR1'))\n"
                "    @plugin_entry\n"
                "    async def chatter(self, n: int, **_):\n"
                "        for i in range(n):\n"
                "            self.logger.warning('chatter %d', i)\n"
                "        return n\n"
            )
        },
    )
    async with Supervisor(plugins, log_dir=False) as sup:
        pid = sup.status("sig").pid
        assert pid is not None

        async def pester() -> None:
            while True:
                os.kill(pid, signal.SIGUSR1)
                await asyncio.sleep(0.001)  # paces the signals; nothing waits on it

        pestering = asyncio.create_task(pester())
        try:
            assert await sup.call("sig", "chatter", {"n": 50_000}, timeout=20) == 50_000
        finally:
            pestering.cancel()
        # The handler's records were delivered too (the chatter pushed the early ones out of the tail).
        os.kill(pid, signal.SIGUSR1)
        await wait_for(lambda: any("got SIGUSR1" in line for line in sup.logs("sig", tail=5)))


async def test_logging_from_forked_children_does_not_corrupt_the_protocol(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(
        plugins,
        "forky",
        {
            "__init__.py": (
                "import logging, multiprocessing as mp\n"
                "from worker.sdk import NekoPluginBase, plugin_entry\n"
                "def job(i):\n"
                "    logging.getLogger('child').warning('progress %d %s', i, 'x' * 100_000)\n"
                "    return i\n"
                "class P(NekoPluginBase):\n"
                "    @plugin_entry\n"
                "    def fanout(self, **_):\n"
                "        with mp.get_context('fork').Pool(2) as pool:\n"
                "            return sum(pool.map(job, range(8)))\n"
            )
        },
    )
    async with Supervisor(plugins, log_dir=False) as sup:
        pid = sup.status("forky").pid
        for _ in range(3):
            assert await sup.call("forky", "fanout", timeout=20) == 28
        assert sup.status("forky").pid == pid


async def test_results_and_errors_that_resist_encoding_still_get_an_answer(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(
        plugins,
        "badres",
        {
            "__init__.py": (
                "from worker.sdk import NekoPluginBase, plugin_entry\n"
                "class Unprintable(Exception):\n"
                "    def __str__(self):\n"
                "        raise RuntimeError('no str')\n"
                "class P(NekoPluginBase):\n"
                "    @plugin_entry\n"
                "    def cyclic(self, **_):\n"
                "        a = []\n"
                "        a.append(a)\n"
                "        return a\n"
                "    @plugin_entry\n"
                "    async def surrogate(self, **_):\n"
                "        raise ValueError('bad byte: ' + b'\\xff'.decode('utf-8', 'surrogateescape'))\n"
                "    @plugin_entry\n"
                "    def unprintable(self, **_):\n"
                "        raise Unprintable()\n"
                "    @plugin_entry\n"
                "    def exits(self, **_):\n"
                "        raise SystemExit(3)\n"
            )
        },
    )
    async with Supervisor(plugins, log_dir=False) as sup:
        pid = sup.status("badres").pid
        with pytest.raises(ResultNotSerializable, match="reference cycle"):
            await sup.call("badres", "cyclic", timeout=5)
        with pytest.raises(EntryFailed, match=r"bad byte: \\udcff"):
            await sup.call("badres", "surrogate", timeout=5)
        with pytest.raises(EntryFailed, match="unprintable Unprintable"):
            await sup.call("badres", "unprintable", timeout=5)
        with pytest.raises(EntryFailed) as caught:
            await sup.call("badres", "exits", timeout=5)
        assert caught.value.type_name == "SystemExit"
        assert sup.status("badres").pid == pid  # every answer came from the same worker


async def test_a_worker_dying_during_start_reports_its_stderr(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(
        plugins,
        "dies",
        {"__init__.py": "import ctypes\nctypes.string_at(0)\n"},
        restart="never",
    )
    async with Supervisor(plugins, log_dir=False) as sup:
        status = sup.status("dies")
        assert status.state == "failed"
        assert "SIGSEGV" in (status.error or "")
        assert "Fatal Python error: Segmentation fault" in (status.error or "")
