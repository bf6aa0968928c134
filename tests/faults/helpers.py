"""Helpers for the fault tests: a supervisor on a chosen subset of fault plugins."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from supervisor import Supervisor
from tests.conftest import FAULT_PLUGINS, copy_plugins


def set_runtime(plugin_dir: Path, **values: Any) -> None:
    """Rewrite keys of [plugin_runtime] in a copied plugin.toml."""
    path = plugin_dir / "plugin.toml"
    text = path.read_text()
    for key, value in values.items():
        line = f"{key} = {_literal(value)}"
        pattern = re.compile(rf"^{key}\s*=.*$", re.M)
        text = pattern.sub(line, text) if pattern.search(text) else text.replace("[plugin_runtime]", f"[plugin_runtime]\n{line}", 1)
    path.write_text(text)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_literal(item)}" for key, item in value.items()) + " }"
    return repr(value)


@contextlib.asynccontextmanager
async def supervising(
    tmp_path: Path, names: list[str], runtime: dict[str, dict[str, Any]] | None = None, **options: Any
) -> AsyncIterator[Supervisor]:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "faults", names)
    for name, values in (runtime or {}).items():
        set_runtime(plugins / name, **values)
    options.setdefault("log_dir", tmp_path / "logs")
    async with Supervisor(plugins, **options) as sup:
        yield sup


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds, checking on every loop turn up to a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)  # a poll of state under a deadline, not synchronisation by sleep


async def running_worker(sup: Supervisor, plugin_id: str, old_pid: int | None, timeout: float = 10.0) -> int:
    """Wait, on state changes, until `plugin_id` is running in a worker other than `old_pid`."""
    async with asyncio.timeout(timeout):
        while True:
            status = sup.status(plugin_id)
            if status.state == "failed":
                raise AssertionError(f"{plugin_id} failed: {status.error}")
            if status.state == "running" and status.pid is not None and status.pid != old_pid:
                return status.pid
            if status.state == "running":
                # Still the old worker: its death has not been noticed yet.
                await sup.wait_for_state(plugin_id, "starting", "backoff", "failed", "stopped", timeout=timeout)
            else:
                await sup.wait_for_state(plugin_id, "running", "failed", "stopped", timeout=timeout)
