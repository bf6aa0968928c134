"""The local launcher: the worker is a child process of the supervisor.

Its exit is seen through a pidfd (a thread waiting on the pid where the kernel
has none); the worker is reaped only after what is left of its process group is
killed, so the group id cannot be reused under us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterable

import psutil

from supervisor import containment, process
from supervisor.launchers.base import ExitCallback, LaunchError, LaunchSpec, Pipe, UsageCallback


class LocalLauncher:
    name = "local"

    async def launch(self, spec: LaunchSpec, timeout: float) -> LocalWorker:
        command = process.command_for(spec.folder, os.getpid(), spec.worker_args)
        try:
            return LocalWorker(process.spawn(spec.folder, command, dict(spec.env)), spec.tag)
        except OSError as exc:
            raise LaunchError(f"cannot spawn the worker: {exc}") from exc

    async def close(self) -> None:
        pass


LOCAL = LocalLauncher()  # stateless: one serves every handle


class LocalWorker:
    where = "local"

    def __init__(self, proc: subprocess.Popen[bytes], tag: str) -> None:
        self._proc = proc
        self._tag = tag
        self._pidfd: int | None = None
        self._loop = asyncio.get_running_loop()
        self._on_exit: ExitCallback | None = None
        self._reaped = False
        self._transports: list[asyncio.BaseTransport] = []
        try:
            self._target: psutil.Process | None = psutil.Process(proc.pid)
        except psutil.Error:
            self._target = None  # already gone: its exit will say so

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def watch_target(self) -> psutil.Process | None:
        return self._target

    async def connect(
        self, stdout: asyncio.Protocol, stderr: asyncio.Protocol, on_exit: ExitCallback, on_usage: UsageCallback
    ) -> Pipe:
        del on_usage  # the supervisor's own watcher looks at a local tree
        proc, loop = self._proc, self._loop
        assert proc.stdin and proc.stdout and proc.stderr
        self._on_exit = on_exit
        self._pidfd = process.open_pidfd(proc.pid)
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._exited)
        else:
            threading.Thread(target=self._wait_in_thread, name=f"wait-{proc.pid}", daemon=True).start()
        out, _ = await loop.connect_read_pipe(lambda: stdout, proc.stdout)
        err, _ = await loop.connect_read_pipe(lambda: stderr, proc.stderr)
        stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, proc.stdin)
        self._transports += [out, err, stdin]
        return stdin

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(Exception):
            os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            self._loop.call_soon_threadsafe(self._exited)

    def _exited(self) -> None:
        if self._reaped:
            return
        self._reaped = True
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
        # The worker is a zombie until reaped, so its process group id is still
        # ours: kill what is left in the group, then reap.
        process.signal_group(self._proc.pid, None, signal.SIGKILL)
        returncode = self._proc.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._target = None
        assert self._on_exit is not None
        self._on_exit(returncode, None)

    def send_signal(self, sig: int) -> None:
        if not self._reaped:
            # The worker and its process group now; descendants that left the group
            # are found by their tag once the worker is dead (see cleanup).
            process.signal_group(self._proc.pid, self._pidfd, sig)

    async def kill_tree(self, known: Iterable[psutil.Process]) -> None:
        # The group is stopped first (by the handle) and the worker killed last: while it
        # lives it is the subreaper of everything below it, so nothing slips out between
        # our look and our kill. The walk reads /proc: off the loop.
        try:
            if self._target is not None:
                await asyncio.to_thread(containment.kill_descendants, self._target, list(known))
        finally:
            self.send_signal(signal.SIGKILL)  # last, and whatever happened above

    async def cleanup(self, known: Iterable[psutil.Process]) -> list[psutil.Process]:
        # Descendants that left the process group (setsid, double fork) are in the
        # watcher's last look at the tree, and still carry the worker's tag. No root
        # pid: the worker is reaped, its pid may already belong to someone else.
        known = list(known)
        return await asyncio.to_thread(lambda: containment.kill_descendants(None, known) + process.kill_tagged(self._tag))

    def close(self, reusable: bool) -> None:
        for transport in self._transports:
            transport.close()
