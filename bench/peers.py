"""The peers: other ways to call into one warm worker process, doing the same echo.

Each class implements `bench.echo.Echo` around one library, with one worker:

    PoolEcho        multiprocessing.Pool(1): `apply` per call, `apply_async` for a burst
    ExecutorEcho    concurrent.futures.ProcessPoolExecutor(max_workers=1)
    LokyEcho        loky.ProcessPoolExecutor(1), a fresh executor (not the reusable singleton)
    PebbleEcho      pebble.ProcessPool(max_workers=1), every call with `timeout=`
    ExecnetEcho     execnet popen gateway running a channel echo loop
    RayEcho         a Ray actor, only when `ray` is importable

`available_peers()` returns the classes whose library is importable and a note for
each one skipped. Every worker runs `bench.echo.echo`, imported by name, so the
benchmark must run as `python -m bench` from the repository root (Ray's actor
is the exception: its class is shipped by value, see RayEcho.start).

The libraries are blocking: `call` and `burst` block the event loop, which the
benchmark allows because it runs one contestant at a time. A burst keeps at most
`in_flight` calls outstanding and settles the oldest first: one worker answers
in order, so the oldest is always the next to finish.

Restart (the benchmark SIGKILLs `worker_pid()` and times the next call): the
class attribute `restartable` says whether the next call succeeds afterwards.

    loky     yes: the killed worker breaks the executor (TerminatedWorkerError);
             `call` replaces the executor and retries once, which is what
             `loky.get_reusable_executor` does for its users.
    pebble   yes: pebble replaces a worker that dies during a task itself (that
             task fails with ProcessExpired), but a worker killed while idle
             breaks the whole pool ("All workers expired"); `call` then replaces
             the pool and retries once.
    others   no: Pool hangs (the killed worker may hold the task queue's lock),
             ProcessPoolExecutor is broken for good, and execnet and Ray are not
             measured (a Ray actor could restart with `max_restarts`).

Start methods: fork from this process is unsafe, because the benchmark is an
asyncio process that holds threads (the pool managers of the other peers, Ray's)
and a forked child inherits whatever locks they held. multiprocessing.Pool,
ProcessPoolExecutor and pebble default to fork on Linux before Python 3.14, so
they get 'spawn'; spawn rather than forkserver because the fork server would
outlive `close()`. loky keeps its own 'loky' method (fork then exec at once, a
fresh interpreter like spawn), execnet starts `python -c` with subprocess, and
Ray's raylet starts its workers as fresh processes.

Run the self-check with `python -m bench.peers` from the repository root.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bench.echo import Echo, echo

_Pending = TypeVar("_Pending")

# Pebble asks for a per-call deadline; generous, since none of the echoes should near it.
PEBBLE_TIMEOUT = 30.0
# execnet runs its remote code in a fresh `python -c` whose sys.path need not hold the
# repository, so the loop puts the root there before importing bench.echo.
_ROOT = str(Path(__file__).resolve().parent.parent)
_EXECNET_LOOP = """
import sys
sys.path.insert(0, channel.receive())
from bench.echo import echo
for value in channel:
    channel.send(echo(value))
"""
_EXECNET_PID = "import os; channel.send(os.getpid())"


def _pipeline(
    submit: Callable[[], _Pending], settle: Callable[[_Pending], object], count: int, in_flight: int
) -> None:
    """`count` submits with at most `in_flight` unsettled, oldest settled first."""
    pending: deque[_Pending] = deque()
    for _ in range(count):
        if len(pending) >= in_flight:
            settle(pending.popleft())
        pending.append(submit())
    while pending:
        settle(pending.popleft())


class PoolEcho:
    name = "multiprocessing.Pool"
    restartable: ClassVar[bool] = False

    def __init__(self) -> None:
        self._pool: Any = None

    async def start(self) -> None:
        self._pool = multiprocessing.get_context("spawn").Pool(1)
        self._pool.apply(echo, (b"warm",))

    async def call(self, value: Any) -> Any:
        return self._pool.apply(echo, (value,))

    async def burst(self, count: int, in_flight: int) -> None:
        _pipeline(
            lambda: self._pool.apply_async(echo, (b"x",)), lambda r: r.get(), count, in_flight
        )

    def worker_pid(self) -> int | None:
        return int(self._pool.apply(os.getpid))

    async def close(self) -> None:
        self._pool.close()
        self._pool.join()


class ExecutorEcho:
    """concurrent.futures.ProcessPoolExecutor; LokyEcho reuses all but how the executor is made."""

    name = "ProcessPoolExecutor"
    restartable: ClassVar[bool] = False

    def __init__(self) -> None:
        self._executor: Any = None

    def _open(self) -> None:
        self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    async def start(self) -> None:
        self._open()
        self._executor.submit(echo, b"warm").result()

    async def call(self, value: Any) -> Any:
        return self._executor.submit(echo, value).result()

    async def burst(self, count: int, in_flight: int) -> None:
        _pipeline(lambda: self._executor.submit(echo, b"x"), lambda f: f.result(), count, in_flight)

    def worker_pid(self) -> int | None:
        return int(self._executor.submit(os.getpid).result())

    async def close(self) -> None:
        self._executor.shutdown(wait=True)


class LokyEcho(ExecutorEcho):
    name = "loky"
    restartable: ClassVar[bool] = True

    def _open(self) -> None:
        import loky

        # A fresh executor rather than the process-wide reusable one, so `close` owns it.
        self._executor = loky.ProcessPoolExecutor(1)

    async def call(self, value: Any) -> Any:
        try:
            return self._executor.submit(echo, value).result()
        except BrokenProcessPool:
            # The worker died: replace the broken executor, as get_reusable_executor does.
            # (loky's TerminatedWorkerError is a BrokenProcessPool.)
            self._executor.shutdown(wait=True, kill_workers=True)
            self._open()
            return self._executor.submit(echo, value).result()


class PebbleEcho:
    name = "pebble"
    restartable: ClassVar[bool] = True

    def __init__(self) -> None:
        self._pool: Any = None
        self._expired: type[Exception] = Exception  # pebble.ProcessExpired once started

    def _open(self) -> None:
        import pebble

        # The library is optional, so its names are looked up here, once, not per call.
        self._expired = pebble.ProcessExpired
        self._pool = pebble.ProcessPool(max_workers=1, context=multiprocessing.get_context("spawn"))

    def _schedule(self, function: Callable[..., Any], *args: Any) -> Any:
        return self._pool.schedule(function, args, timeout=PEBBLE_TIMEOUT)

    async def start(self) -> None:
        self._open()
        self._schedule(echo, b"warm").result()

    async def call(self, value: Any) -> Any:
        try:
            return self._schedule(echo, value).result()
        except self._expired:
            # The worker died during this call; pebble has replaced it.
            return self._schedule(echo, value).result()
        except RuntimeError:
            # The worker died while idle: pebble reports the pool broken
            # (BrokenProcessPool, a RuntimeError, then RuntimeError from
            # `schedule`), and only a new pool serves again.
            self._pool.stop()
            self._pool.join()
            self._open()
            return self._schedule(echo, value).result()

    async def burst(self, count: int, in_flight: int) -> None:
        _pipeline(lambda: self._schedule(echo, b"x"), lambda f: f.result(), count, in_flight)

    def worker_pid(self) -> int | None:
        return int(self._schedule(os.getpid).result())

    async def close(self) -> None:
        self._pool.close()
        self._pool.join()


class ExecnetEcho:
    name = "execnet"
    restartable: ClassVar[bool] = False

    def __init__(self) -> None:
        self._group: Any = None
        self._channel: Any = None

    async def start(self) -> None:
        import execnet

        # An own group, so `close` terminates exactly this gateway and nothing is left
        # for execnet's default group to reap at exit.
        self._group = execnet.Group()
        gateway = self._group.makegateway(f"popen//python={sys.executable}")
        self._channel = gateway.remote_exec(_EXECNET_LOOP)
        self._channel.send(_ROOT)
        await self.call(b"warm")

    async def call(self, value: Any) -> Any:
        self._channel.send(value)
        return self._channel.receive()

    async def burst(self, count: int, in_flight: int) -> None:
        _pipeline(
            lambda: self._channel.send(b"x"), lambda _: self._channel.receive(), count, in_flight
        )

    def worker_pid(self) -> int | None:
        # A second channel to the same process: the echo channel carries only echoes.
        gateway = self._group[0]
        return int(gateway.remote_exec(_EXECNET_PID).receive())

    async def close(self) -> None:
        self._channel.close()
        self._group.terminate(timeout=5.0)


class _EchoActor:
    """The Ray actor's class; Ray's workers import it from this module by name."""

    def echo(self, value: Any) -> Any:
        return echo(value)

    def pid(self) -> int:
        return os.getpid()


class RayEcho:
    name = "ray actor"
    restartable: ClassVar[bool] = False

    def __init__(self) -> None:
        self._ray: Any = None
        self._actor: Any = None
        self._owns_ray = False

    async def start(self) -> None:
        import ray

        # The library is optional, so it is imported here, once, not per call.
        self._ray = ray
        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        # Ray's workers import an actor's class by name from their working dir, which
        # the Ray launcher (joined first in the benchmark) makes the plugins folder:
        # `bench` is not there. Shipped by value, the class needs no import.
        ray.cloudpickle.register_pickle_by_value(sys.modules["bench"])
        self._actor = ray.remote(_EchoActor).remote()
        ray.get(self._actor.echo.remote(b"warm"))

    async def call(self, value: Any) -> Any:
        return self._ray.get(self._actor.echo.remote(value))

    async def burst(self, count: int, in_flight: int) -> None:
        _pipeline(lambda: self._actor.echo.remote(b"x"), self._ray.get, count, in_flight)

    def worker_pid(self) -> int | None:
        return int(self._ray.get(self._actor.pid.remote()))

    async def close(self) -> None:
        self._ray.kill(self._actor)
        self._ray.cloudpickle.unregister_pickle_by_value(sys.modules["bench"])
        if self._owns_ray:
            self._ray.shutdown()


# Peers whose library is optional: (class, module to find, how to get it).
_OPTIONAL: list[tuple[type, str, str]] = [
    (LokyEcho, "loky", "pip install 'neko-supervisor[bench]'"),
    (PebbleEcho, "pebble", "pip install 'neko-supervisor[bench]'"),
    (ExecnetEcho, "execnet", "pip install 'neko-supervisor[bench]'"),
    (RayEcho, "ray", "pip install 'ray>=2.9'"),
]


def available_peers() -> tuple[list[type], list[str]]:
    """The peer classes whose library is importable, and a note for each one skipped."""
    peers: list[type] = [PoolEcho, ExecutorEcho]
    skipped: list[str] = []
    for peer, module, install in _OPTIONAL:
        if importlib.util.find_spec(module) is None:
            skipped.append(f"{peer.name}: {module} not installed ({install})")
        else:
            peers.append(peer)
    return peers, skipped


def _children() -> list[str]:
    """This process's descendants, less the resource trackers: multiprocessing's and
    loky's are per-process singletons shared by every peer, and exit with this process."""
    import psutil

    commands = (" ".join(child.cmdline()) for child in psutil.Process().children(recursive=True))
    return [command for command in commands if "resource_tracker" not in command]


async def _check(peer_class: type) -> str:
    """One peer's line: start-up, median latency, burst rate, restart time if restartable."""
    peer: Echo = peer_class()
    began = time.perf_counter()
    await peer.start()
    line = f"{peer.name:20} start {(time.perf_counter() - began) * 1e3:5.0f} ms"
    latencies = []
    for _ in range(200):
        began = time.perf_counter()
        await peer.call(b"x")
        latencies.append(time.perf_counter() - began)
    line += f"  latency {statistics.median(latencies) * 1e6:5.0f} us"
    began = time.perf_counter()
    await peer.burst(2000, 64)
    line += f"  burst {2000 / (time.perf_counter() - began):7,.0f} calls/s"
    if peer_class.restartable:
        pid = peer.worker_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        began = time.perf_counter()
        assert await peer.call(b"after") == b"after"
        line += f"  restart {(time.perf_counter() - began) * 1e3:4.0f} ms"
        line += f" (pid {pid} -> {peer.worker_pid()})"
    await peer.close()
    left = _children()
    return line + (f"  LEFT BEHIND: {left}" if left else "")


async def _self_check() -> None:
    peers, skipped = available_peers()
    for note in skipped:
        print(f"skipped {note}")
    for peer_class in peers:
        print(await _check(peer_class), flush=True)


if __name__ == "__main__":
    asyncio.run(_self_check())
