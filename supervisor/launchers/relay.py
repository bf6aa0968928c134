"""The node side of the Ray launcher: one `WorkerRelay` actor per worker.

It runs inside a Ray actor process on the node Ray chose, whose working dir is
the plugins folder Ray's runtime environment unpacked there, and spawns the
same `python -m worker PLUGIN_DIR` a local supervisor would, as its own child.
It never imports the plugin: plugin code runs only in that child.

Bytes go both ways untouched: the supervisor's `write(seq, data)` calls go to the
worker's stdin in `seq` order, and one `read()` at a time, long-polled, returns
everything the worker wrote since the last one, as events:

    ("out", bytes)  ("err", bytes)     stdout (frames) and stderr, as read
    ("out_eof",)    ("err_eof",)       a stream ended
    ("usage", rss, cpu_time, count)    one look at the worker's tree (for its limits)
    ("exit", returncode)               the worker exited and is reaped; always last

Node-local mechanics (process group, tagged strays, the tree's usage) reuse the
local supervisor's code (`supervisor.process`, `supervisor.containment`), so a
worker on Ray is contained the way a local one is. This module imports Ray only
to name the node it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from supervisor import containment, process

PIPE_DRAIN_TIMEOUT = 0.1  # after the exit, how long the last bytes may take to arrive
STRAY_KILL_TIMEOUT = 1.0

Event = tuple[Any, ...]


class _Collect(asyncio.Protocol):
    """One of the worker's output pipes, into the relay's event list."""

    def __init__(self, kind: str, push: Callable[[Event], None], ended: asyncio.Event) -> None:
        self._kind = kind
        self._push = push
        self._ended = ended

    def data_received(self, data: bytes) -> None:
        self._push((self._kind, data))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ended.is_set():
            self._ended.set()
            self._push((f"{self._kind}_eof",))


class WorkerRelay:
    """One worker on this node. Methods are called by the supervisor's RayWorker."""

    def __init__(self, folder_name: str, watch_interval: float, memory_limit: int | None) -> None:
        self._folder_name = folder_name
        self._watch_interval = watch_interval
        self._memory_limit = memory_limit
        self._events: list[Event] = []
        self._ready: asyncio.Event | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._tag = ""
        self._stdin: asyncio.WriteTransport | None = None
        self._next_seq = 0
        self._early: dict[int, bytes] = {}  # writes that arrived ahead of their turn
        self._known: dict[int, psutil.Process] = {}
        self._exited = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start ----------------------------------------------------------------------
    async def spawn(self, worker_args: list[str], env_allow: list[str], tag: str) -> dict[str, Any]:
        """Start the worker in its plugin's folder on this node. Returns where it runs."""
        import ray  # only to name the node

        loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        folder = Path.cwd() / self._folder_name  # the job's working dir is the plugins folder
        if not (folder / "plugin.toml").is_file():
            raise FileNotFoundError(f"{folder}/plugin.toml is not on this node (was the plugin folder added after the supervisor joined the cluster?)")
        env = process.worker_env(env_allow)
        env[process.TAG_VARIABLE] = tag
        self._tag = tag
        # Spawned from the actor's event loop thread, which lives as long as the actor:
        # the worker's PR_SET_PDEATHSIG fires when its parent *thread* ends.
        self._proc = process.spawn(folder, process.command_for(folder, os.getpid(), worker_args), env)
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        out_ended, err_ended = asyncio.Event(), asyncio.Event()
        await loop.connect_read_pipe(lambda: _Collect("out", self._push, out_ended), self._proc.stdout)
        await loop.connect_read_pipe(lambda: _Collect("err", self._push, err_ended), self._proc.stderr)
        self._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, self._proc.stdin)
        self._pidfd = process.open_pidfd(self._proc.pid)
        exited = asyncio.Event()
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, exited.set)
        else:  # no pidfd: a thread waits on the pid
            waiter = self._proc.pid
            loop.run_in_executor(None, lambda: os.waitid(os.P_PID, waiter, os.WEXITED | os.WNOWAIT)).add_done_callback(
                lambda _: exited.set()
            )
        self._start(self._report_exit(exited, out_ended, err_ended))
        if self._watch_interval > 0:
            self._start(self._watch())
        context = ray.get_runtime_context()
        node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return {"pid": self._proc.pid, "node_id": context.get_node_id(), "node_ip": node_ip, "folder": str(folder)}

    def _start(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _push(self, event: Event) -> None:
        self._events.append(event)
        assert self._ready is not None
        self._ready.set()

    # -- the streams ----------------------------------------------------------------
    async def read(self) -> list[Event]:
        """Everything since the last read; waits until there is something."""
        assert self._ready is not None
        while not self._events:
            await self._ready.wait()
            self._ready.clear()
        events, self._events = self._events, []
        return events

    async def write(self, seq: int, data: bytes) -> None:
        """Bytes for the worker's stdin, in `seq` order whatever order the calls arrive in."""
        self._early[seq] = data
        while self._next_seq in self._early:
            chunk = self._early.pop(self._next_seq)
            self._next_seq += 1
            if self._stdin is not None and not self._stdin.is_closing():
                self._stdin.write(chunk)

    async def close_stdin(self, seq: int) -> None:
        """After the writes before `seq`: the worker sees EOF on its input."""
        await self.write(seq, b"")
        if self._stdin is not None:
            self._stdin.close()

    # -- signals and the tree --------------------------------------------------------
    async def send_signal(self, sig: int) -> None:
        if self._proc is not None and not self._exited:
            process.signal_group(self._proc.pid, self._pidfd, sig)

    async def kill_tree(self) -> None:
        """SIGKILL everything below the worker, then the worker (its group stopped first)."""
        if self._proc is None or self._exited:
            return
        process.signal_group(self._proc.pid, self._pidfd, signal.SIGSTOP)
        try:
            target = psutil.Process(self._proc.pid)
            known = list(self._known.values())
            await asyncio.to_thread(containment.kill_descendants, target, known)
        except psutil.Error:
            pass
        finally:
            if not self._exited:
                process.signal_group(self._proc.pid, self._pidfd, signal.SIGKILL)

    async def cleanup(self) -> int:
        """After the exit: kill what is left of the tree (strays that left the group); how many."""
        known = list(self._known.values())
        strays = await asyncio.to_thread(lambda: containment.kill_descendants(None, known) + process.kill_tagged(self._tag))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STRAY_KILL_TIMEOUT):
                while any(containment.alive(p) for p in strays):  # noqa: ASYNC110 - no event exists for a non-child's death
                    await asyncio.sleep(0.005)
        return len(strays)

    # -- exit and usage --------------------------------------------------------------
    async def _report_exit(self, exited: asyncio.Event, *ended: asyncio.Event) -> None:
        await exited.wait()
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
        self._exited = True
        # A zombie until reaped: its group id is still ours. Kill what is left in it, then reap.
        process.signal_group(self._proc.pid, None, signal.SIGKILL)
        returncode = self._proc.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PIPE_DRAIN_TIMEOUT):
                for end in ended:
                    await end.wait()
        self._push(("exit", returncode))

    async def _watch(self) -> None:
        assert self._proc is not None
        try:
            target = psutil.Process(self._proc.pid)
        except psutil.Error:
            return
        while not self._exited:
            known = self._known
            try:
                usage = await asyncio.to_thread(containment.measure, target, containment.parent_map(), known, self._memory_limit)
            except psutil.Error:
                return
            if self._exited:
                return
            self._known = {proc.pid: proc for proc in usage.processes}
            self._push(("usage", usage.rss, usage.cpu_time, usage.count))
            await asyncio.sleep(self._watch_interval)  # a sampling period, not synchronisation
