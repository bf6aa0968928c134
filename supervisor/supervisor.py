"""The public asyncio API: discover plugins, start them, call them, watch them.

    async with Supervisor("plugins") as sup:
        value = await sup.call("persistent", "save", {"key": "a", "value": "b"}, timeout=5.0)
        sup.status("persistent").state   # "running"
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import protocol
from supervisor import process
from supervisor.chaos import PluginChaos
from supervisor.errors import InvalidArguments, PluginNotFound
from supervisor.launchers import LOCAL, Launcher
from supervisor.lifecycle import PluginState
from supervisor.manifest import discover
from supervisor.policy import Clock
from supervisor.slot import PluginSlot, PluginStatus, SlotOptions
from supervisor.watch import DEFAULT_WATCH_INTERVAL, ResourceWatcher

DEFAULT_CANCEL_GRACE = 1.0
SANDBOX_MODES: dict[bool | str, str] = {False: "off", True: "on", "off": "off", "on": "on", "required": "required"}


def default_log_dir(plugins_dir: Path) -> Path:
    """Per user and per plugins folder, under the system temp dir."""
    digest = hashlib.sha1(str(plugins_dir).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"neko-supervisor-{os.getuid()}" / f"{plugins_dir.name}-{digest}"


class Supervisor:
    """Runs every plugin of `plugins_dir` (each `*/plugin.toml`) in its own worker process.

    - `auto_start`: start the plugins whose manifest says `auto_start = true` in `start()`.
    - `max_frame_size`: largest protocol frame in bytes, both directions.
    - `cancel_grace`: seconds a timed-out call has to stop before its worker is killed.
    - `log_dir`: where each plugin's `<id>.log` goes (default: a folder under the temp dir);
      `False` keeps logs in memory only.
    - `env_allow`: extra environment variable names passed to workers.
    - `clock`: monotonic seconds for the restart budget and the backoff between failed
      starts; tests pass a `FakeClock`, whose sleeps pass at once.
    - `sandbox`: the least Landlock sandbox every plugin gets (a plugin.toml can ask for
      more, never less): False / "off", True / "on", or "required" (refuse to start a
      plugin the kernel cannot sandbox).
    - `network`: False denies TCP to every sandboxed plugin, whatever its plugin.toml
      says (a sandboxed plugin can rewrite its own plugin.toml); True lets each say.
    - `watch_interval`: seconds between two looks at every worker's process tree
      (memory, CPU time and process limits are enforced at this pace).
    - `launcher`: where workers run: a local child process (the default), or
      `RayLauncher(address)` (extra `neko-supervisor[ray]`) for a Ray cluster. A
      plugin.toml's `[plugin_runtime] launcher = "local"` keeps that plugin local.
    """

    def __init__(
        self,
        plugins_dir: str | os.PathLike[str],
        *,
        auto_start: bool = True,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        log_dir: str | os.PathLike[str] | bool | None = None,
        env_allow: Iterable[str] = (),
        clock: Clock = time.monotonic,
        sandbox: bool | str = False,
        network: bool = True,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
        launcher: Launcher | None = None,
    ) -> None:
        if not isinstance(max_frame_size, int) or max_frame_size < 1024:
            raise ValueError(f"max_frame_size must be an int of at least 1024 bytes, got {max_frame_size!r}")
        if not _positive_number(cancel_grace):
            raise ValueError(f"cancel_grace must be a positive number of seconds, got {cancel_grace!r}")
        sandbox_mode = SANDBOX_MODES.get(sandbox) if isinstance(sandbox, bool | str) else None
        if sandbox_mode is None:
            raise ValueError(f'sandbox must be False, True, "off", "on" or "required", got {sandbox!r}')
        if not isinstance(network, bool):
            raise ValueError(f"network must be True or False, got {network!r}")
        if not _positive_number(watch_interval):
            raise ValueError(f"watch_interval must be a positive number of seconds, got {watch_interval!r}")
        if launcher is not None and not (callable(getattr(launcher, "launch", None)) and isinstance(getattr(launcher, "name", None), str)):
            raise ValueError(f"launcher must be a launcher such as RayLauncher(address), got {launcher!r}")
        self.launcher: Launcher = launcher or LOCAL
        self.plugins_dir = Path(plugins_dir).resolve()
        self._watcher = ResourceWatcher(float(watch_interval))
        self.auto_start = auto_start
        if log_dir is False:
            resolved_log_dir = None
        elif log_dir is None or log_dir is True:
            resolved_log_dir = default_log_dir(self.plugins_dir)
        else:
            resolved_log_dir = Path(log_dir)
        self._options = SlotOptions(
            env=process.worker_env(env_allow),
            max_frame_size=max_frame_size,
            cancel_grace=float(cancel_grace),
            log_dir=resolved_log_dir,
            clock=clock,
            sandbox=sandbox_mode,
            network=network,
            watcher=self._watcher,
            launcher=self.launcher,
            env_allow=frozenset(env_allow),
        )
        self._slots: dict[str, PluginSlot] = {}
        self._started = False

    # -- whole supervisor ---------------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Discover plugins and start the auto_start ones concurrently.

        Returns once start-up has settled: every auto_start plugin is running or
        its first start has failed. A broken plugin never blocks the others.
        """
        if self._started:
            return
        for found in discover(self.plugins_dir):
            self._slots[found.id] = PluginSlot(found.id, found.folder, found.manifest, found.error, self._options)
        self._started = True
        if not self.auto_start:
            return
        starts = [
            slot.start()
            for slot in self._slots.values()
            if slot.manifest is not None and slot.manifest.runtime.enabled and slot.manifest.runtime.auto_start
        ]
        try:
            # A start that raises (it should not) must not stop the others.
            await asyncio.gather(*starts, return_exceptions=True)
        except BaseException:
            # Cancelled while starting (`async with` never reaches __aexit__):
            # leave no worker behind.
            await asyncio.shield(self.stop())
            raise

    async def stop(self) -> None:
        """Stop every plugin concurrently (shutdown hooks, then SIGTERM, then SIGKILL).

        From its first instant no plugin starts again: a `restart()` whose stop this
        one joins ends with `PluginUnavailable` instead of starting a new worker."""
        for slot in self._slots.values():
            slot.closing = True
        try:
            await asyncio.gather(*(asyncio.shield(slot.stop()) for slot in self._slots.values()), return_exceptions=True)
        finally:
            for slot in self._slots.values():
                slot.close()
            await self._watcher.close()
            await self.launcher.close()

    async def kill(self) -> None:
        """Forced stop of every plugin: SIGKILL each worker's tree now, without shutdown
        hooks. For a second Ctrl-C; a `stop()` under way then ends at once."""
        await asyncio.gather(*(asyncio.shield(slot.kill()) for slot in self._slots.values()), return_exceptions=True)

    # -- one plugin -------------------------------------------------------------------
    async def call(
        self,
        plugin_id: str,
        entry_id: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call `entry_id` of `plugin_id` with keyword arguments `args`; returns its value.

        `timeout` defaults to the entry's own timeout, else the manifest's `call_timeout`.
        """
        slot = self._slot(plugin_id)
        if args is None:
            args = {}
        elif type(args) is not dict and not isinstance(args, Mapping):  # a dict skips the slower ABC check
            raise InvalidArguments(f"args must be a mapping of argument names to values, got {type(args).__name__}")
        elif not _all_str(args):
            raise InvalidArguments("args keys must all be strings (argument names)")
        if timeout is not None and not _positive_number(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(entry_id, str) or not entry_id:
            raise InvalidArguments(f"entry_id must be a non-empty string, got {entry_id!r}")
        return await slot.call(entry_id, args, None if timeout is None else float(timeout))

    def status(self, plugin_id: str) -> PluginStatus:
        return self._slot(plugin_id).status()

    def statuses(self) -> list[PluginStatus]:
        return [slot.status() for slot in self._slots.values()]

    def chaos(self, plugin_id: str) -> PluginChaos:
        """Fault injection for one plugin (see supervisor/chaos.py and the README's
        "Testing your plugin under faults"). What it injects shows in `status().injections`."""
        return self._slot(plugin_id).chaos

    def logs(self, plugin_id: str, tail: int | None = None) -> list[str]:
        """The plugin's last `tail` log lines (stderr, log records, supervisor events)."""
        return self._slot(plugin_id).log.tail(tail)

    def logs_after(self, plugin_id: str, position: int, limit: int = 1000) -> tuple[list[str], int, int]:
        """The log lines added since `position` (a former `status().log_lines`, or 0), at
        most the last `limit`; how many new lines that leaves out (over `limit`, or already
        dropped from the in-memory tail); and the log's position now, to resume from."""
        log = self._slot(plugin_id).log
        lines, skipped = log.after(position, limit)
        return lines, skipped, log.appended

    async def start_plugin(self, plugin_id: str) -> None:
        await self._slot(plugin_id).start()

    async def stop_plugin(self, plugin_id: str) -> None:
        await self._slot(plugin_id).stop()

    async def restart(self, plugin_id: str) -> None:
        """Stop and start the plugin, resetting its restart budget (also from `failed`)."""
        await self._slot(plugin_id).restart()

    async def wait_for_state(self, plugin_id: str, *states: str, timeout: float = 10.0) -> PluginState:
        """Wait until the plugin is in one of `states` ("running", "failed", ...); returns it.

        Raises `TimeoutError` after `timeout` seconds. Event-driven, no polling.
        """
        slot = self._slot(plugin_id)
        wanted = frozenset(PluginState(state) for state in states)
        if not wanted:
            raise ValueError("wait_for_state needs at least one state")
        try:
            async with asyncio.timeout(timeout):
                return await slot.wait_for_state(wanted)
        except TimeoutError:
            wanted_text = " or ".join(sorted(state.value for state in wanted))
            detail = f": {slot.error}" if slot.error else ""
            raise TimeoutError(
                f"plugin {plugin_id!r} is still {slot.state.value!r} after {timeout:g} s (waited for {wanted_text}){detail}"
            ) from None

    @property
    def started(self) -> bool:
        """True once `start()` has discovered the plugins (their starts may still run)."""
        return self._started

    @property
    def plugin_ids(self) -> list[str]:
        return list(self._slots)

    def _slot(self, plugin_id: str) -> PluginSlot:
        if not self._started:
            raise RuntimeError("the supervisor is not started: use `async with Supervisor(...)` or `await start()`")
        slot = self._slots.get(plugin_id)
        if slot is None:
            raise PluginNotFound(plugin_id, list(self._slots))
        return slot


def _all_str(keys: Iterable[object]) -> bool:
    # A plain loop, not all() over a generator (SIM110): a generator per call on every call's path costs ~0.25 us.
    for key in keys:  # noqa: SIM110  # see above
        if not isinstance(key, str):
            return False
    return True


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
