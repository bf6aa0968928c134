"""The Ray launcher: each worker runs on a Ray cluster node, spawned there by its plugin's actor.

    supervisor (here)                         node chosen by Ray
    WorkerHandle -- RayWorker == Ray calls ===> WorkerRelay actor --pipes--> python -m worker PLUGIN_DIR
                              == its channel => (one per plugin)            (one per worker)
                                 (TCP, per worker)

Everything the handle decides stays here: deadlines, cancel, kill after grace,
the restart policy and budget. Ray only places and carries:

- one actor per plugin, created with max_restarts=0 and max_task_retries=0: Ray
  never restarts it or runs a call twice (at-most-once stays ours). A restart
  spawns the next worker from the same actor while it lives (no new Ray worker
  process: a restart costs about what it costs locally); a spare runs beside;
- placement from plugin.toml's `[plugin_runtime]` num_cpus, num_gpus, memory_mb
  and node_labels (a label selector); plugins that ask for nothing are spread;
- the plugins folder is the Ray job's working dir (its runtime environment):
  Ray packs it once when the supervisor joins and unpacks it on each node that
  runs a worker; the worker runs in its plugin's folder there, so its files
  (data.db) live on that node;
- the actor's death or its node's loss ends the worker: calls in flight fail
  with WorkerCrashed and the slot restarts it under the same policy, wherever
  Ray then places the new actor.

Frames are relayed as opaque bytes, not on Ray calls (each would cost a plain
actor call): the relay opens a port per worker on its node's address, and the
RayWorker connects to it and presents the token it gave the relay through Ray;
stdin, signals, stdout, stderr, usage and the exit cross that connection
(channel.py). Ray calls remain for spawn, kill_tree, cleanup, and a standing
`wait_exit()` whose failure is Ray's word that the actor died (a node lost to a
partition closes no connection).

Ray's own authentication is whatever the cluster runs with (token auth where it
is on): this module connects with the caller's environment and never turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

try:
    import ray
    import ray.exceptions
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "the Ray launcher needs Ray: pip install 'neko-supervisor[ray]'", name=exc.name
    ) from exc

from supervisor.containment import TreeUsage
from supervisor.launchers import channel
from supervisor.launchers.base import ExitCallback, LaunchError, LaunchSpec, Pipe, UsageCallback
from supervisor.launchers.relay import WorkerRelay, kill_tagged_on_this_node
from supervisor.manifest import RuntimeOptions

logger = logging.getLogger("supervisor.ray")
ADMITTED = channel.message(channel.ADMITTED)

ACTOR_CALL_TIMEOUT = 5.0  # a kill or cleanup the actor does not answer in this long: kill the actor
CHANNEL_TIMEOUT = 5.0     # at least this long to connect a worker's channel and be admitted
EXIT_RELAY_TIMEOUT = 10.0  # Ray says the worker exited: its channel may not stay silent this long before EXIT
JOIN_TIMEOUT = 120.0      # joining the cluster, the plugins folder's upload included
PROBE_TIMEOUT = 5.0       # the head's port must answer a TCP connect this fast
DEFAULT_NAMESPACE = "neko-supervisor"


def placement(runtime: RuntimeOptions) -> dict[str, Any]:
    """Ray actor options for one plugin's worker, from its [plugin_runtime] table."""
    options: dict[str, Any] = {"num_cpus": runtime.num_cpus, "num_gpus": runtime.num_gpus}
    if runtime.memory_mb:
        options["memory"] = runtime.memory_mb * 1024 * 1024
    if runtime.node_labels:
        options["label_selector"] = dict(runtime.node_labels)
    else:
        # Plugins are mostly idle and ask for little: spread them over the nodes
        # rather than pack them onto the first (Ray's default for an actor).
        options["scheduling_strategy"] = "SPREAD"
    return options


def _is_port_range(ports: Any) -> bool:
    return (
        isinstance(ports, tuple | list) and len(ports) == 2
        and all(isinstance(port, int) and not isinstance(port, bool) for port in ports)
        and 1 <= ports[0] <= ports[1] <= 65535
    )


def describe_needs(runtime: RuntimeOptions) -> str:
    needs = [f"num_cpus = {runtime.num_cpus:g}"]
    if runtime.num_gpus:
        needs.append(f"num_gpus = {runtime.num_gpus:g}")
    if runtime.memory_mb:
        needs.append(f"memory_mb = {runtime.memory_mb}")
    if runtime.node_labels:
        needs.append("node_labels = {" + ", ".join(f"{k} = {v!r}" for k, v in runtime.node_labels) + "}")
    return ", ".join(needs)


class RayLauncher:
    """Start workers on a Ray cluster.

    - `address`: the cluster ("127.0.0.1:6379", "ray://..." for Ray Client, "auto"
      for the one this machine belongs to); None starts a local one-node cluster.
    - `namespace`: the Ray namespace of the relay actors.
    - `watch_interval`: seconds between two looks at a worker's tree on its node
      (its memory, CPU time and process limits); 0 turns the looks off.
    - `channel_ports`: (first, last): the ports a relay may listen on for its workers'
      channels (see relay.py), for clusters whose firewalls open only some; default any.
    - `init_options`: more keyword arguments for `ray.init`.

    Connects on the first launch (or `await connect()`), in a thread: `ray.init`
    blocks. Disconnects in `close()` if it connected.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = "auto",
        *,
        namespace: str = DEFAULT_NAMESPACE,
        watch_interval: float = 0.25,
        channel_ports: tuple[int, int] | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be a Ray cluster address such as '127.0.0.1:6379', 'auto' or None, got {address!r}")
        if not isinstance(watch_interval, int | float) or watch_interval < 0:
            raise ValueError(f"watch_interval must be a number of seconds >= 0, got {watch_interval!r}")
        if channel_ports is not None and not _is_port_range(channel_ports):
            raise ValueError(f"channel_ports must be (first, last) with 1 <= first <= last <= 65535, got {channel_ports!r}")
        self.address = address
        self.channel_ports = None if channel_ports is None else (int(channel_ports[0]), int(channel_ports[1]))
        self.namespace = namespace
        self.watch_interval = float(watch_interval)
        self._init_options = dict(init_options or {})
        self._connecting: asyncio.Future[None] | None = None
        self._root: Path | None = None  # the plugins folder: the job's working dir
        self._connected_here = False
        self._relay: Any = None  # WorkerRelay as a Ray actor class
        self._actors: dict[str, _PluginActor] = {}  # plugin id -> its relay actor
        self._parked = threading.Event()  # set: the thread that joined may end (see _join)

    async def connect(self, plugins_dir: Path) -> None:
        """Join the cluster (once), shipping `plugins_dir` as the job's working dir;
        raises LaunchError if it cannot be reached."""
        if self._root is not None and plugins_dir != self._root:
            raise LaunchError(
                f"one Ray launcher serves one plugins folder: {self._root} is shipped to the cluster, not {plugins_dir}", permanent=True
            )
        self._root = plugins_dir
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._join(plugins_dir))
        try:
            await asyncio.shield(self._connecting)
        except LaunchError:
            self._connecting = None  # the next launch tries again
            raise

    async def _join(self, plugins_dir: Path) -> None:
        where = self.address or "a new local cluster"
        if os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true", "yes"):
            # The workers' channels are plain TCP (token-authenticated, not encrypted): on a
            # cluster that encrypts its own traffic, they would carry the plugins' data in the clear.
            raise LaunchError(
                "RAY_USE_TLS is on, and the Ray launcher's worker channels have no TLS yet: the plugins' "
                "calls would cross the network unencrypted (see README, Scaling out on Ray: Security)",
                permanent=True,
            )
        if self.address not in (None, "auto") and not self.address.startswith("ray://"):
            # ray.init retries an address nobody answers for minutes: ask the port first.
            await _reachable(self.address)
        # Ray's core worker installs its own handler for SIGTERM (a crash report, then
        # abort) over the host's: a service must still stop cleanly on SIGTERM, so the
        # handlers the host had are put back once Ray is in.
        saved = _host_signal_handlers()
        loop = asyncio.get_running_loop()
        joined: asyncio.Future[None] = loop.create_future()

        def join() -> None:
            try:
                self._init(plugins_dir)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, joined, exc)
                return
            loop.call_soon_threadsafe(_settle, joined, None)
            # Stay: a local cluster that ray.init started (address None) was spawned from
            # this thread, and Ray ties its processes' lives to their parent thread's
            # (PR_SET_PDEATHSIG): they must not die when a join thread ends.
            self._parked.wait()

        # A daemon thread, not the loop's executor: a join that hangs must never keep
        # the host from exiting (asyncio.run waits for its executor's threads).
        self._parked.clear()
        threading.Thread(target=join, name="ray-join", daemon=True).start()
        try:
            async with asyncio.timeout(JOIN_TIMEOUT):
                await joined
        except TimeoutError:
            raise LaunchError(f"could not join the Ray cluster at {where} within {JOIN_TIMEOUT:g} s") from None
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _init(self, plugins_dir: Path) -> None:
        if ray.is_initialized():
            raise LaunchError(
                "Ray is already connected in this process: the Ray launcher connects itself, with the plugins folder "
                "as the job's working dir (create the launcher before any other use of Ray, or call ray.shutdown() first)",
                permanent=True,
            )
        quiet = _DropRecord("SIGTERM handler is not set")  # by design: see _join
        ray_logger = logging.getLogger("ray._private.worker")
        ray_logger.addFilter(quiet)
        try:
            ray.init(
                address=self.address, namespace=self.namespace, log_to_driver=False,
                logging_level=logging.WARNING, configure_logging=False,
                runtime_env={"working_dir": str(plugins_dir)}, **self._init_options,
            )
        except Exception as exc:  # ConnectionError, RuntimeError, an auth failure, a folder too large...
            raise LaunchError(f"cannot join the Ray cluster at {self.address or 'a new local cluster'}: {_first_line(exc)}") from exc
        finally:
            ray_logger.removeFilter(quiet)
        self._connected_here = True
        self._relay = ray.remote(WorkerRelay)

    async def launch(self, spec: LaunchSpec, timeout: float) -> RayWorker:
        runtime = spec.manifest.runtime
        await self.connect(spec.folder.parent)  # bounded by JOIN_TIMEOUT, not by the plugin's own timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in (1, 2):
            if not self.connected:  # closed while this launch waited
                raise LaunchError("the Ray launcher is closed", permanent=True)
            try:
                relay = self._relay_for(spec)
            except Exception as exc:  # Ray refused the options (a label it cannot parse, a fractional GPU over 1...)
                raise LaunchError(f"Ray refused the placement {describe_needs(runtime)}: {_first_line(exc)}", permanent=True) from exc
            relay.users += 1
            token = secrets.token_bytes(channel.TOKEN_SIZE)  # through Ray's authenticated call; it opens the worker's channel
            try:
                async with asyncio.timeout_at(deadline):
                    info = await relay.actor.spawn.remote(list(spec.worker_args), sorted(spec.env_allow), spec.tag, token)
            except TimeoutError:
                self._abandon(relay, spec.tag)
                raise LaunchError(
                    f"no Ray node started the worker within {timeout:g} s (plugin_runtime.timeout): it asks for "
                    f"{describe_needs(runtime)}; the cluster has {_available()} free"
                ) from None
            except ray.exceptions.RuntimeEnvSetupError as exc:
                self._drop(relay)
                raise LaunchError(f"Ray could not bring the plugins folder {spec.folder.parent} to a node: {_first_line(exc)}") from exc
            except ray.exceptions.RayActorError as exc:
                self._drop(relay)
                if relay.spawned and attempt == 1:
                    continue  # the plugin's actor died while it had no worker: a new one
                raise LaunchError(f"the Ray actor could not spawn the worker: {_first_line(exc)}") from exc
            except (ray.exceptions.RayError, OSError) as exc:
                # The actor may be broken for good (its working dir gone): the next worker gets a new one.
                self._abandon(relay, spec.tag)
                raise LaunchError(f"the Ray actor could not spawn the worker: {_first_line(exc)}") from exc
            except BaseException:
                # Cancelled (a stop): the actor may be spawning a worker nobody will read; it goes.
                self._abandon(relay, spec.tag)
                raise
            relay.spawned = True
            worker = RayWorker(self, relay, spec.tag, info)
            try:
                # Its own few seconds at least: a first placement may have used up the launch's.
                async with asyncio.timeout_at(max(deadline, loop.time() + CHANNEL_TIMEOUT)):
                    await worker.open_channel(token)
            except (OSError, TimeoutError, channel.ChannelError) as exc:
                worker.abort_channel()
                self._abandon(relay, spec.tag)
                why = str(exc) or ("no answer" if isinstance(exc, TimeoutError) else type(exc).__name__)
                raise LaunchError(
                    f"cannot open the worker's channel to {worker.node_ip}:{worker.port}: {why} (the supervisor's host "
                    "must be able to connect to the Ray nodes' ports: see RayLauncher channel_ports)"
                ) from None
            except BaseException:
                worker.abort_channel()
                self._abandon(relay, spec.tag)
                raise
            return worker
        raise AssertionError("unreachable")  # pragma: no cover

    def _relay_for(self, spec: LaunchSpec) -> _PluginActor:
        """The plugin's actor: the one its last worker ran in, while it lives and the plugin
        asks for the same placement; else a new one."""
        runtime = spec.manifest.runtime
        options = placement(runtime)
        memory_limit = runtime.memory_limit_mb * 1024 * 1024 or None
        key = (repr(sorted(options.items())), memory_limit)
        relay = self._actors.get(spec.manifest.id)
        if relay is not None and relay.key == key:
            return relay
        if relay is not None:
            self.retire(relay)  # its workers end as they are; the actor goes after them
        actor = self._relay.options(
            **options,
            max_restarts=0,       # the supervisor restarts workers, under its own policy
            max_task_retries=0,   # and never runs a call twice
            max_concurrency=64,   # a threaded actor: wait_exit() waits while spawn, kill_tree and cleanup go on
        ).remote(spec.folder.name, self.watch_interval, memory_limit, self.channel_ports)
        relay = _PluginActor(spec.manifest.id, actor, key)
        self._actors[spec.manifest.id] = relay
        return relay

    def release(self, relay: _PluginActor) -> None:
        """A worker of this actor is gone: a retired actor goes with its last worker."""
        relay.users -= 1
        if relay.retired and relay.users <= 0:
            _kill_actor(relay.actor)

    def retire(self, relay: _PluginActor) -> None:
        """No new worker goes to this actor (the plugin was stopped, or asks for another
        placement); it goes once its last worker is released."""
        relay.retired = True
        if self._actors.get(relay.plugin_id) is relay:
            del self._actors[relay.plugin_id]
        if relay.users <= 0:
            _kill_actor(relay.actor)

    def _drop(self, relay: _PluginActor) -> None:
        """The actor is dead, or must be now (a failed or cancelled launch)."""
        self.retire(relay)
        relay.users = 0
        _kill_actor(relay.actor)

    actor_died = _drop

    @property
    def connected(self) -> bool:
        """Joined and not closed. Every Ray call checks it first: after ray.shutdown(), a Ray
        call would start a new local Ray instance inside the host (Ray's auto-init)."""
        return self._connected_here and ray.is_initialized()

    def _abandon(self, relay: _PluginActor, tag: str) -> None:
        """A launch in this actor failed: the worker, if any, goes, and no new worker goes to
        the actor (it goes once the plugin's other worker, if any, is done with it)."""
        if relay.users > 1 and self.connected:
            relay.actor.cleanup.remote(tag)  # kills the worker (it carries the tag) and what it started
            self.retire(relay)
            self.release(relay)
        else:
            self._drop(relay)

    async def close(self) -> None:
        for relay in list(self._actors.values()):
            self._drop(relay)
        if self._connected_here:
            self._connected_here = False
            await asyncio.to_thread(ray.shutdown)
        self._parked.set()
        self._connecting = None
        self._root = None


@dataclass(slots=True)
class _PluginActor:
    """One plugin's relay actor, shared by its workers (the current one and a spare) across restarts."""

    plugin_id: str
    actor: Any
    key: tuple[str, int | None]  # the placement it was created with
    users: int = 0               # workers launched in it and not yet cleaned up
    spawned: bool = False        # it has been placed and has run a worker
    retired: bool = False


@functools.cache
def _stray_killer() -> Any:
    return ray.remote(num_cpus=0, max_retries=0)(kill_tagged_on_this_node)


def _kill_actor(actor: Any) -> None:
    if ray.is_initialized():  # after ray.shutdown() the actor went with the job
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


class _DropRecord(logging.Filter):
    """Drops one expected warning (ray.init run off the main thread, on purpose)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._prefix)


HOST_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _host_signal_handlers() -> dict[signal.Signals, Any]:
    """The Python handlers of the signals a host stops on (only the main thread can set them again)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in HOST_SIGNALS if signal.getsignal(sig) is not None}


def _available() -> str:
    try:
        free = ray.available_resources()  # type: ignore[no-untyped-call]
    except Exception:  # the cluster's view is a hint in an error message, never a new error
        return "an unknown amount"
    shown = {key: value for key, value in free.items() if not key.startswith(("node:", "object_store"))}
    return ", ".join(
        f"memory {value / 2**20:.0f} MB" if key == "memory" else f"{key} {value:g}" for key, value in sorted(shown.items())
    ) or "nothing"


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    """What went wrong, in one line: for an error raised in an actor, its cause, not Ray's header."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = ANSI_ESCAPE.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else ""
    if isinstance(exc, ray.exceptions.RayError):
        return line or type(exc).__name__
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def _reachable(address: str) -> None:
    """Raise LaunchError unless host:port accepts a TCP connection within a few seconds."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host.strip("[]") or "127.0.0.1", int(port))
    except ValueError:
        raise LaunchError(f"the Ray address {address!r} is not host:port (or 'auto', or ray://...)", permanent=True) from None
    except (OSError, TimeoutError) as exc:
        raise LaunchError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc or 'no answer'})") from None
    writer.close()


class _ChannelStdin:
    """The worker's stdin: IN messages on its channel; closing it sends IN_EOF (the worker
    sees EOF, and its last frames still come back)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._closing = False

    def write(self, data: bytes) -> None:
        if not self.is_closing():
            self._transport.writelines((channel.stream_header(channel.IN, len(data)), data))

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if not self.is_closing():
            self._closing = True
            self._transport.write(channel.message(channel.IN_EOF))


class RayWorker(asyncio.Protocol):
    """One worker on a Ray node, as the handle drives it; also the protocol of its channel
    (channel.py), which stays paused until the handle connects."""

    watch_target = None  # on another node: its relay measures the tree (see connect's on_usage)

    def __init__(self, launcher: RayLauncher, relay: _PluginActor, tag: str, info: dict[str, Any]) -> None:
        self._launcher = launcher
        self._relay = relay
        self._actor = relay.actor
        self._tag = tag
        self._loop = asyncio.get_running_loop()
        self.pid: int = info["pid"]
        self.node_id: str = info["node_id"]
        self.node_ip: str = info["node_ip"]
        self.port: int = info["port"]
        self.where = f"ray node {self.node_ip} ({self.node_id[:12]})"
        self._transport: asyncio.Transport | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._decoder = channel.Decoder(
            {channel.OUT: self._stream_data("out"), channel.ERR: self._stream_data("err")},
            {channel.OUT_EOF: lambda: self._close_stream("out"), channel.ERR_EOF: lambda: self._close_stream("err"),
             channel.USAGE: self._on_tree_usage, channel.EXIT: self._on_worker_exit},
        )
        self._admitted: asyncio.Future[None] = self._loop.create_future()
        self._held = bytearray()  # what came before the handle connected
        self._exit_overdue: asyncio.TimerHandle | None = None
        self._exited = False
        self._ended_early: tuple[int | None, str | None] | None = None  # before the handle connected
        self._actor_lost = False
        self._released = False
        self._streams: dict[str, asyncio.Protocol] = {}
        self._open: set[str] = set()
        self._on_exit: ExitCallback | None = None
        self._on_usage: UsageCallback | None = None

    async def open_channel(self, token: bytes) -> None:
        """Connect to the relay's port for this worker, present the token, and wait until the
        relay admits the connection (raises OSError, TimeoutError or ChannelError if not)."""
        await self._loop.create_connection(lambda: self, self.node_ip, self.port)
        assert self._transport is not None
        channel.keep_alive(self._transport.get_extra_info("socket"))
        self._transport.write(token)
        await self._admitted

    def abort_channel(self) -> None:
        """The launch failed after the spawn: nothing more is read or sent."""
        self._released = True  # its end is nobody's news: the launch raises instead
        if not self._admitted.done():
            self._admitted.cancel()
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol: the channel ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._on_exit is None:
            # Not connected to the handle yet: the admission, then what came with it, held.
            self._held += data
            if not self._admitted.done() and len(self._held) >= len(ADMITTED):
                first, self._held = bytes(self._held[: len(ADMITTED)]), self._held[len(ADMITTED) :]
                if first == ADMITTED:
                    assert self._transport is not None
                    self._transport.pause_reading()  # until the handle connects its streams
                    self._admitted.set_result(None)
                else:
                    self._admitted.set_exception(channel.ChannelError(f"the relay's port answered {first!r}, not an admission"))
            return
        if self._exit_overdue is not None:  # the exit is known: the channel may not fall silent for long
            self._exit_overdue.cancel()
            self._exit_overdue = self._loop.call_later(EXIT_RELAY_TIMEOUT, self._exit_not_relayed)
        try:
            self._decoder.feed(data)
        except channel.ChannelError as exc:
            self._lost(f"its relay's channel broke: {exc}")

    def eof_received(self) -> bool:
        return False  # the relay closes its side after the exit event; nothing is sent back

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted.done():
            self._admitted.set_exception(exc or ConnectionResetError("the relay closed the connection without admitting it"))
        elif self._admitted.cancelled() or self._admitted.exception() is not None:
            pass  # never admitted: the launch reports it (and decides about the actor)
        elif not self._exited and not self._released:
            # The relay's process is gone (the actor was killed, its node lost) before it
            # told the exit: the worker died with it (PR_SET_PDEATHSIG), or will.
            detail = f": {exc}" if exc else ""
            self._lost(f"the Ray actor relaying it died: its channel closed{detail}")

    # -- the handle's side -----------------------------------------------------------------
    async def connect(
        self, stdout: asyncio.Protocol, stderr: asyncio.Protocol, on_exit: ExitCallback, on_usage: UsageCallback
    ) -> Pipe:
        assert self._transport is not None and self._admitted.done(), "open_channel() comes first (in launch)"
        self._streams = {"out": stdout, "err": stderr}
        self._open = set(self._streams)
        self._on_exit, self._on_usage = on_exit, on_usage
        if self._ended_early is None:
            self._watcher = self._loop.create_task(self._watch_actor(), name=f"relay-{self.pid}")
        # Not from inside connect(): the handle has no stdin to answer with until it returns
        # (as locally, where the pipes' first bytes come on a later loop turn).
        self._loop.call_soon(self._start_reading)
        return _ChannelStdin(self._transport)

    def _start_reading(self) -> None:
        """What came with the admission first, then the rest as it arrives."""
        if self._released:
            return
        held, self._held = bytes(self._held), bytearray()
        if held:
            self.data_received(held)
        if self._ended_early is not None:
            self._end(*self._ended_early)
        elif not self._exited and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    async def _watch_actor(self) -> None:
        """Ray's word on the actor: a node lost to a partition closes no TCP connection (until
        keepalive gives up). And once Ray says the worker exited, its EXIT must follow on the
        channel soon: a channel that went silent would otherwise hold the exit back."""
        if not self._launcher.connected:
            return
        try:
            await self._actor.wait_exit.remote(self._tag)
        except ray.exceptions.RayError as exc:
            self._lost(f"the Ray actor relaying it died: {_first_line(exc)}")
            return
        if not self._exited:
            self._exit_overdue = self._loop.call_later(EXIT_RELAY_TIMEOUT, self._exit_not_relayed)

    def _exit_not_relayed(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._end(None, f"it exited, but its channel fell silent for {EXIT_RELAY_TIMEOUT:g} s before telling how")

    def _stream_data(self, stream: str) -> Callable[[bytes], None]:
        def received(data: bytes) -> None:
            if stream in self._open:
                self._streams[stream].data_received(data)
        return received

    def _on_tree_usage(self, rss: int, cpu_time: float, count: int) -> None:
        assert self._on_usage is not None
        self._on_usage(TreeUsage(rss=rss, cpu_time=cpu_time, count=count))

    def _on_worker_exit(self, returncode: int) -> None:
        self._end(returncode, None)

    def _close_stream(self, kind: str) -> None:
        if kind in self._open:
            self._open.discard(kind)
            self._streams[kind].eof_received()
            self._streams[kind].connection_lost(None)

    def _end(self, returncode: int | None, reason: str | None) -> None:
        if self._exited:
            return
        if self._on_exit is None:
            self._ended_early = self._ended_early or (returncode, reason)
            return
        for kind in self._streams:  # stdout first: its last frames before stderr's end
            self._close_stream(kind)
        self._exited = True
        if self._exit_overdue is not None:
            self._exit_overdue.cancel()
        self._on_exit(returncode, reason)

    def _lost(self, reason: str) -> None:
        """The actor is gone, or cannot be trusted (it did not answer a kill): it goes, the
        worker with it, and the worker's end is told now."""
        if not self._actor_lost:
            self._actor_lost = True
            self._launcher.actor_died(self._relay)
        if self._transport is not None:
            self._transport.abort()
        self._end(None, reason)

    def send_signal(self, sig: int) -> None:
        # On the channel, in order with the frames (a freeze then a call: the call meets a
        # stopped worker), and never behind them (the relay writes stdin on another thread).
        if not self._exited and self._transport is not None and not self._transport.is_closing():
            self._transport.write(channel.message(channel.SIGNAL, sig))

    async def kill_tree(self, known: Iterable[psutil.Process]) -> None:
        del known  # the relay keeps its own look at the tree
        if not self._launcher.connected:
            self._lost("the Ray launcher was closed")  # its actors went with its job
            return
        try:
            async with asyncio.timeout(ACTOR_CALL_TIMEOUT):
                await self._actor.kill_tree.remote(self._tag)
        except (TimeoutError, ray.exceptions.RayError) as exc:
            # The actor cannot do it: the actor goes, and the worker with it.
            why = f"did not answer a kill within {ACTOR_CALL_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else f"died: {_first_line(exc)}"
            self._lost(f"the Ray actor relaying it {why}")

    async def cleanup(self, known: Iterable[psutil.Process]) -> list[psutil.Process]:
        del known
        if not self._launcher.connected:
            return []  # its actors, and their workers, went with the launcher's job
        with contextlib.suppress(TimeoutError, ray.exceptions.RayError):
            async with asyncio.timeout(ACTOR_CALL_TIMEOUT):
                if not self._actor_lost:
                    await self._actor.cleanup.remote(self._tag)
                else:
                    # The actor is gone but its node may live: a task pinned there kills
                    # what the worker left (a lost node takes them with it).
                    await _stray_killer().options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=False)
                    ).remote(self._tag)
        return []  # nothing local to wait for: the strays were waited for on their node

    def close(self, reusable: bool) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if self._exit_overdue is not None:
            self._exit_overdue.cancel()
        if self._transport is not None:
            self._transport.abort()
        if not self._released:
            self._released = True
            if not reusable:
                # Stopped: no restart follows, so the actor (and what it reserved on
                # its node) goes once its last worker (a spare) is gone too.
                self._launcher.retire(self._relay)
            self._launcher.release(self._relay)
