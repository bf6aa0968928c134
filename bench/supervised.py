"""The supervisor's side of the benchmark: `Supervisor.call` of the bench plugin's
echo entries, and the start, restart, memory and fan-out figures."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.echo import gather_bounded
from supervisor import Supervisor
from supervisor.launchers import Launcher

PLUGIN = Path(__file__).resolve().parent / "plugins" / "echo"
BULK_FRAME = 64 * 1024 * 1024  # room for a 16 MiB value each way


def plugins_folder(count: int, spare: bool = False) -> Path:
    """A temporary plugins folder with `count` copies of the bench plugin (echo, echo_1, ...);
    `spare`: with `spare_worker = true`."""
    root = Path(tempfile.mkdtemp(prefix="neko-bench-"))
    for index in range(count):
        plugin_id = "echo" if index == 0 else f"echo_{index}"
        target = root / plugin_id
        shutil.copytree(PLUGIN, target, ignore=shutil.ignore_patterns("__pycache__"))
        toml = target / "plugin.toml"
        text = toml.read_text().replace('id = "echo"', f'id = "{plugin_id}"').replace('entry = "echo:', f'entry = "{plugin_id}:')
        toml.write_text(text + ("spare_worker = true\n" if spare else ""))
    return root


class SupervisorEcho:
    """An `Echo` contestant: Supervisor.call of one entry of the bench plugin."""

    def __init__(self, entry: str, spare: bool = False, launcher: Launcher | None = None) -> None:
        self.entry = entry
        self.name = f"Supervisor.call, {'sync' if entry == 'echo' else 'async'} entry" + (", spare_worker = true" if spare else "")
        if launcher is not None:
            self.name += f", {launcher.name} launcher"
        self.spare = spare
        self._folder = plugins_folder(1, spare)
        self.sup = Supervisor(self._folder, log_dir=False, max_frame_size=BULK_FRAME, launcher=launcher)

    async def start(self) -> None:
        await self.sup.start()
        await self.call(b"warm")
        await self.spare_ready()

    async def spare_ready(self) -> None:
        """With a spare: wait until it stands by (it starts in the background after each restart)."""
        deadline = time.monotonic() + 30
        # No event says "spare ready" (status() is a snapshot): a short poll, bounded.
        while self.spare and self.sup.status("echo").spare_pid is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no spare worker within 30 s: {self.sup.status('echo').error}")
            await asyncio.sleep(0.005)

    async def call(self, value: Any) -> Any:
        return await self.sup.call("echo", self.entry, {"value": value})

    async def burst(self, count: int, in_flight: int) -> None:
        await gather_bounded(self.call, count, in_flight)

    def worker_pid(self) -> int | None:
        return self.sup.status("echo").pid

    async def close(self) -> None:
        await self.sup.stop()
        shutil.rmtree(self._folder, ignore_errors=True)


def ray_launched() -> SupervisorEcho:
    """The async entry through a Supervisor whose worker a Ray actor spawns and relays,
    on a new local one-node cluster. Create and start it before any other Ray user of
    this process: the launcher calls ray.init itself (the plugins folder is the job's
    working dir) and refuses to share a connection it did not make."""
    from supervisor.launchers.ray import RayLauncher

    # As the Ray actor peer would start it: two CPUs, no dashboard (its processes
    # would only add noise to every figure of the run).
    launcher = RayLauncher(None, init_options={"num_cpus": 2, "include_dashboard": False})
    return SupervisorEcho("aecho", launcher=launcher)


async def cold_start(count: int) -> float:
    """Seconds from `start()` (discovery, spawn) until `count` plugins are all running."""
    folder = plugins_folder(count)
    sup = Supervisor(folder, log_dir=False)
    try:
        began = time.perf_counter()
        await sup.start()
        elapsed = time.perf_counter() - began
        states = {status.state.value for status in sup.statuses()}
        assert states == {"running"}, states
        return elapsed
    finally:
        await sup.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def restart_after_sigkill(contestant: Any) -> float:
    """Seconds from SIGKILL of the contestant's worker until a call completes again.
    The worker must run on this machine (so a Ray-launched one: on a local cluster)."""
    pid = contestant.worker_pid()
    assert pid is not None
    if isinstance(contestant, SupervisorEcho):
        await contestant.spare_ready()
    began = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            await contestant.call(b"after")
            return time.perf_counter() - began
        except Exception:  # the call that meets the dead worker fails; the next goes to the new one
            if time.perf_counter() - began > 30:
                raise


def memory_of(pid: int) -> tuple[float, float]:
    """(RSS, USS) of one process, in MiB."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


async def supervisor_with_plugins(count: int) -> tuple[Supervisor, Path]:
    folder = plugins_folder(count)
    sup = Supervisor(folder, log_dir=False)
    await sup.start()
    return sup, folder


async def fan_out(sup: Supervisor, calls_each: int, in_flight: int) -> tuple[float, float, int]:
    """Every plugin of `sup` gets `calls_each` calls, `in_flight` at a time, all at once.
    Returns (seconds, supervisor CPU seconds, calls)."""
    from bench.reference import cpu_seconds

    async def one(plugin_id: str, value: Any) -> Any:
        return await sup.call(plugin_id, "aecho", {"value": value})

    ids = sup.plugin_ids
    cpu_before, began = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(gather_bounded(lambda v, p=pid: one(p, v), calls_each, in_flight) for pid in ids))
    return time.perf_counter() - began, cpu_seconds() - cpu_before, calls_each * len(ids)
