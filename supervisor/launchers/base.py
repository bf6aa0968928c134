"""The launcher seam: what the worker handle needs of wherever its worker runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from supervisor.containment import TreeUsage
from supervisor.manifest import Manifest

# Called once the worker has exited and is reaped: its return code (None when
# unknown, e.g. its node was lost) and, where the launcher knows better than the
# code, why (the Ray actor that held it died).
ExitCallback = Callable[[int | None, str | None], None]
# Where the supervisor's resource watcher cannot look (another node), the launcher
# measures the tree itself and reports each look here.
UsageCallback = Callable[[TreeUsage], None]


class LaunchError(Exception):
    """The launcher could not start a worker: no process exists. `permanent`: retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a launcher needs to start one worker."""

    manifest: Manifest
    worker_args: tuple[str, ...]  # after the plugin folder; the launcher adds interpreter, folder, --parent-pid
    env: Mapping[str, str]        # the worker's environment as this host would give it (tag included)
    env_allow: frozenset[str]     # extra names a remote node passes on from its own environment
    tag: str                      # the worker's token (process.TAG_VARIABLE): finds its strays

    @property
    def folder(self) -> Path:
        return self.manifest.folder


class Pipe(Protocol):
    """The worker's stdin as the handle writes it (an asyncio write transport locally)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...


class LaunchedWorker(Protocol):
    """One started worker process."""

    @property
    def pid(self) -> int: ...

    @property
    def where(self) -> str:
        """Where it runs, for people: "local", "ray node 10.0.0.7 (5f3a...)"."""
        ...

    @property
    def watch_target(self) -> psutil.Process | None:
        """The process for the supervisor's resource watcher, or None where it cannot see it."""
        ...

    async def connect(
        self, stdout: asyncio.Protocol, stderr: asyncio.Protocol, on_exit: ExitCallback, on_usage: UsageCallback
    ) -> Pipe:
        """Feed the worker's stdout and stderr to these protocols (`data_received`,
        then `connection_lost` at their end) and call `on_exit` once, when it has exited."""
        ...

    def send_signal(self, sig: int) -> None:
        """To the worker and its process group, while it is not yet reaped; never raises."""
        ...

    async def kill_tree(self, known: Iterable[psutil.Process]) -> None:
        """SIGKILL the worker's descendants (`known`: the watcher's last look) and then the worker."""
        ...

    async def cleanup(self, known: Iterable[psutil.Process]) -> list[psutil.Process]:
        """After the exit: kill what is left of its tree; returns the local processes to wait for."""
        ...

    def close(self, reusable: bool) -> None:
        """Release the streams (the worker is dead). `reusable`: it died under us, so a
        restart is likely: a launcher may keep what it placed (a Ray actor) for the next."""
        ...


class Launcher(Protocol):
    """Starts workers somewhere. `name` is what plugin.toml's `launcher` key calls it."""

    name: str

    async def launch(self, spec: LaunchSpec, timeout: float) -> LaunchedWorker:
        """Start one worker within `timeout` seconds, or raise LaunchError saying what it
        waited for (nothing is left running). Cancellation leaves nothing running either."""
        ...

    async def close(self) -> None:
        """The supervisor is done: release what the launcher holds (not the workers: they are stopped first)."""
        ...
