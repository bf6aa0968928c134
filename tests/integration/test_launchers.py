"""The launcher seam from the outside: which launcher a plugin gets, and what a
plugin that asks for one this supervisor lacks is told. (Ray itself: tests/ray.)"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest

from supervisor import PluginUnavailable, Supervisor
from supervisor.launchers import LocalLauncher
from tests.conftest import FAULT_PLUGINS, copy_plugins
from tests.faults.helpers import set_runtime

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]


async def test_a_plugin_that_asks_for_ray_without_a_ray_launcher_fails_and_says_how(tmp_path: Path) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo", "crash"])
    set_runtime(plugins / "crash", launcher="ray")
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        crash = sup.status("crash")
        assert crash.state == "failed" and crash.restarts == 0  # retrying cannot help: no retries
        assert crash.error is not None
        for part in (str(plugins / "crash" / "plugin.toml"), "plugin_runtime.launcher = 'ray'", "no ray launcher", "--ray ADDRESS"):
            assert part in crash.error, crash.error
        with pytest.raises(PluginUnavailable):
            await sup.call("crash", "ping")
        # The others never noticed, and run locally.
        assert await sup.call("echo", "ping") == "pong"
        echo = sup.status("echo")
        assert echo.where == "local" and echo.pid is not None and psutil.Process(echo.pid).ppid() == os.getpid()


async def test_launcher_local_in_plugin_toml_is_the_default_launcher(tmp_path: Path) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"])
    set_runtime(plugins / "echo", launcher="local")
    async with Supervisor(plugins, log_dir=tmp_path / "logs", launcher=LocalLauncher()) as sup:
        assert await sup.call("echo", "echo", {"value": 1}) == 1
        assert sup.status("echo").where == "local"
    assert sup.status("echo").where is None  # stopped: no worker, nowhere


@pytest.mark.parametrize("launcher", ["ray", 3, object()])
def test_a_launcher_that_is_not_one_is_named(tmp_path: Path, launcher: object) -> None:
    with pytest.raises(ValueError, match="launcher must be a launcher such as RayLauncher"):
        Supervisor(tmp_path, launcher=launcher)  # type: ignore[arg-type]


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 8])
async def test_a_stop_at_any_moment_of_a_launch_leaves_no_worker(tmp_path: Path, turns: int) -> None:
    """The launch is a task of its own: a stop that lands before it ran, while it runs, or just after
    it spawned (before the start resumed) must end with no process and a stopped plugin."""
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"])
    set_runtime(plugins / "echo", auto_start=False)
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        starting = asyncio.ensure_future(sup.start_plugin("echo"))
        for _ in range(turns):
            await asyncio.sleep(0)  # let the start run this many loop turns: the moment under test
        await sup.stop_plugin("echo")
        await starting
        assert sup.status("echo").state == "stopped" and sup.status("echo").pid is None
        await sup.start_plugin("echo")  # and the plugin still starts afterwards
        assert await sup.call("echo", "ping") == "pong"
