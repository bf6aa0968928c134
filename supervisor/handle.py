"""One worker process: spawn, handshake, call, cancel, stop, kill. Mechanism, no policy.

A handle's life is a straight line (see `lifecycle.WorkerState`); once DEAD it
stays dead, and the slot makes a new handle for the next worker.

Where the process runs is the launcher's business (`supervisor.launchers`: a
local child, or a Ray actor's child on a cluster node); every decision stays
here. When the worker dies, every call in flight on it fails at once:
`WorkerCrashed` if it broke under us, `PluginUnavailable` if we were stopping
it, `ProtocolError` if it broke the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

import protocol
from protocol import (
    Activate,
    Call,
    Cancel,
    EntryInfo,
    ErrorInfo,
    Fatal,
    Hello,
    Log,
    Message,
    Ping,
    Pong,
    Ready,
    Result,
    Shutdown,
)
from protocol.exits import EXIT_NO_RESOURCES, EXIT_OUT_OF_MEMORY, EXIT_PROTOCOL_ERROR
from protocol.streams import MessageProtocol
from supervisor import containment, process
from supervisor.chaos import FrameTap, Phase, PluginChaos
from supervisor.containment import TreeUsage
from supervisor.errors import (
    EntryFailed,
    EntryNotFound,
    ExitInfo,
    InvalidArguments,
    PluginError,
    PluginUnavailable,
    ProtocolError,
    ResultNotSerializable,
    WorkerCrashed,
    stderr_excerpt,
)
from supervisor.launchers import (
    LOCAL,
    LaunchedWorker,
    Launcher,
    LaunchError,
    LaunchSpec,
    Pipe,
)
from supervisor.lifecycle import WORKER_MOVES, WorkerState, check_move
from supervisor.logs import PluginLog
from supervisor.manifest import Manifest
from supervisor.watch import ResourceWatcher

SIGTERM_GRACE = 2.0      # after SIGTERM, this long before SIGKILL
IN_CALL_KILLS = {
    Phase.BEFORE_DELIVERY: "killed before the call reached the plugin",
    Phase.IN_ENTRY: "killed while the entry ran",
    Phase.BEFORE_RESULT: "killed after the entry returned, before its result reached the caller",
}
PIPE_DRAIN_TIMEOUT = 0.1  # after exit, how long to wait for the last frames and stderr
STDOUT_EOF_GRACE = 0.5    # after the protocol output closes, how long the exit may take to be seen
STRAY_KILL_TIMEOUT = 1.0  # how long to wait for killed descendants to disappear


class StartFailed(Exception):
    """The worker did not complete its handshake. Internal: the slot turns it into state."""

    def __init__(self, message: str, traceback: str = "", exit: ExitInfo | None = None, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback
        self.exit = exit
        self.permanent = permanent  # retrying cannot help (the kernel lacks a required sandbox)


@dataclass(slots=True)
class _Pending:
    entry_id: str
    future: asyncio.Future[Any]


def error_from_wire(plugin_id: str, entry_id: str, error: ErrorInfo) -> PluginError:
    if error.kind == "entry_not_found":
        return EntryNotFound(plugin_id, entry_id)
    if error.kind == "invalid_arguments":
        return InvalidArguments(f"plugin {plugin_id!r} entry {entry_id!r}: {error.message}")
    if error.kind == "unserializable":
        return ResultNotSerializable(error.type, error.message, error.traceback, plugin_id=plugin_id, entry_id=entry_id)
    if error.kind == "cancelled":
        return PluginUnavailable(plugin_id, f"call {entry_id!r} was cancelled: {error.message}")
    return EntryFailed(error.type, error.message, error.traceback, plugin_id=plugin_id, entry_id=entry_id)


class WorkerHandle:
    def __init__(
        self,
        manifest: Manifest,
        log: PluginLog,
        *,
        env: dict[str, str],
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
        on_death: Callable[[WorkerHandle, ExitInfo], None] | None = None,
        sandbox: str = "off",
        watcher: ResourceWatcher | None = None,
        network: bool | None = None,
        chaos: PluginChaos | None = None,
        standby: bool = False,
        launcher: Launcher = LOCAL,
        env_allow: frozenset[str] = frozenset(),
    ) -> None:
        self.manifest = manifest
        # A spare: started as far as its hello, it loads the plugin on activate().
        self.standby = standby
        self._on_death = on_death
        self.plugin_id = manifest.id
        self.log = log
        self.token = uuid.uuid4().hex
        self.env = {**env, process.TAG_VARIABLE: self.token}
        self.launcher = launcher
        self._env_allow = env_allow
        self.max_frame_size = max_frame_size
        # Every frame to this worker is written from the loop thread: one reused Packer serves them all.
        self._encoder = protocol.MessageEncoder(max_frame_size)
        self.state = WorkerState.STARTING
        self.entries: dict[str, EntryInfo] = {}
        self.exit: ExitInfo | None = None
        self.started_at: float | None = None  # time.monotonic() of the handshake
        self.sandbox = sandbox
        self.network = manifest.runtime.network if network is None else network
        self.protections: dict[str, Any] = {}  # what the worker reported it applied
        self.usage: TreeUsage | None = None    # the watcher's latest look at the tree
        self._watcher = watcher
        self._killer: asyncio.Task[None] | None = None
        self._worker: LaunchedWorker | None = None
        self._launching: asyncio.Task[LaunchedWorker] | None = None
        self._kill_requested = False  # kill() came while the worker was being launched
        self._loop = asyncio.get_running_loop()
        self._chaos = chaos
        self._tap = FrameTap(chaos, self._loop, self._write, self._deliver, self._violation) if chaos is not None else None
        self._kill_on_result: set[int] = set()  # chaos: calls whose result must never reach the caller
        # chaos: calls whose worker kills itself in the entry: call id -> (entry armed for, entry called)
        self._in_entry: dict[int, tuple[str | None, str]] = {}
        self._thaw_timer: asyncio.TimerHandle | None = None
        self._killed_before_stop = False
        self._frozen = False  # by chaos.freeze(), until thawed
        self._stdin: Pipe | None = None
        self._hello = False
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._hello_seen: asyncio.Future[None] = self._loop.create_future()
        self._dead: asyncio.Future[ExitInfo] = self._loop.create_future()
        self._pending: dict[int, _Pending] = {}
        self._abandoned: dict[int, asyncio.TimerHandle | None] = {}
        self._next_id = 0
        self._death_reason = ""
        self._death_error: PluginError | None = None  # what in-flight calls get instead of WorkerCrashed
        self._exited = False
        self._finish_task: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[ExitInfo] | None = None
        self._open_pipes = 0
        self._drained = asyncio.Event()

    # -- properties ---------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    @property
    def where(self) -> str | None:
        """Where the worker runs ("local", "ray node ..."), once launched."""
        return self._worker.where if self._worker is not None else None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self.state is not WorkerState.DEAD

    @property
    def usable(self) -> bool:
        """Ready, and not yet seen to exit (the handle turns DEAD a little after the process does)."""
        return self.state is WorkerState.READY and not self._exited

    def _move(self, new: WorkerState) -> None:
        self.state = check_move(WORKER_MOVES, self.state, new)

    # -- start --------------------------------------------------------------
    async def start(self) -> None:
        """Spawn and complete the handshake within the manifest's `timeout`, or raise StartFailed.

        On any failure (cancellation included) the process is killed and reaped
        before this returns.
        """
        if self._chaos is not None and self._chaos.take_spawn_failure():
            self._chaos.record("fail_spawn", "this start failed by injection")
            self._move(WorkerState.DEAD)
            self._dead.set_result(ExitInfo(0, None, "chaos: spawn failed"))
            raise StartFailed("chaos: the worker failed to start (injected by fail_spawns)")
        spec = LaunchSpec(
            self.manifest,
            tuple(process.worker_args(self.max_frame_size, self.manifest.runtime, self.sandbox, self.network, self.standby)),
            self.env, self._env_allow, self.token,
        )
        # A task of its own: a kill (a stop) during a launch that takes time (a Ray node
        # to find) cancels it, and nothing is left running.
        self._launching = launching = self._loop.create_task(self.launcher.launch(spec, self.manifest.runtime.timeout))
        try:
            self._worker = await launching
        except BaseException as exc:
            if launching.done() and not launching.cancelled() and launching.exception() is None:
                # Cancelled in the instant the launch ended: a worker exists; kill and reap it.
                self._worker = launching.result()
                await self._discard()
                raise
            launching.cancel()  # our own cancellation: the launch goes too
            self._move(WorkerState.DEAD)
            self._dead.set_result(ExitInfo(0, None, self._death_reason or f"launch failed: {exc}"))
            if isinstance(exc, asyncio.CancelledError) and self._kill_requested and not self._current_task_cancelling():
                raise StartFailed(f"the worker's launch was stopped: {self._death_reason}", exit=self._dead.result()) from None
            if isinstance(exc, LaunchError):
                raise StartFailed(exc.message, permanent=exc.permanent) from exc
            if isinstance(exc, OSError):
                raise StartFailed(f"cannot spawn the worker: {exc}") from exc
            raise
        finally:
            self._launching = None
        if self._kill_requested:  # killed (stopped) after the launch ended, before this task resumed
            await self._discard()
            raise StartFailed(f"the worker's launch was stopped: {self._death_reason}", exit=self.exit)
        # plugin_runtime.timeout for the handshake; a launcher bounds its own launch (a Ray
        # node to find) by the same timeout, and joining a cluster by its own.
        await self._until(self._connect_and_wait(self._hello_seen if self.standby else self._handshake))
        if not self.standby:
            self._ready()

    async def _discard(self) -> None:
        """A launched worker that must not start after all: connect to see its exit, kill it, reap it."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._connect_and_kill())

    async def _connect_and_kill(self) -> None:
        await self._connect()
        await self._kill_and_wait(self._death_reason or "start interrupted")

    async def activate(self, chaos: PluginChaos | None = None) -> None:
        """A spare becomes the plugin's worker: it loads the plugin now. Returns once it
        is ready, or raises StartFailed with the process killed and reaped, as start().

        A spare is made without the plugin's chaos: faults are for the plugin's worker,
        so they attach here, after the `activate` frame (a fresh worker's first frame
        out is a call too)."""
        assert self.standby and self._worker is not None, "activate() is for a started spare"
        self.standby = False
        if chaos is not None and chaos.take_spawn_failure():
            chaos.record("fail_spawn", "this start failed by injection")
            await self._abort("chaos: spawn failed")
            raise StartFailed("chaos: the worker failed to start (injected by fail_spawns)", exit=self.exit)
        self.log.new_worker(self._worker.pid)
        self._send(Activate())
        if chaos is not None:
            self._chaos = chaos
            self._tap = FrameTap(chaos, self._loop, self._write, self._deliver, self._violation)
        await self._until(asyncio.shield(self._handshake))
        self._ready()

    async def dismiss(self) -> None:
        """An unused spare goes: its input closes and it exits (killed if it has not within 2 s)."""
        if not self.alive:
            return
        self._death_reason = "spare dismissed"
        if self.state is WorkerState.STARTING:
            self._move(WorkerState.STOPPING)
        if self._stdin is not None:
            self._stdin.close()
        if not await self._wait_dead_for(SIGTERM_GRACE):
            await self._kill_and_wait("spare dismissed")

    async def _connect_and_wait(self, step: asyncio.Future[None]) -> None:
        assert self._worker is not None
        where = "" if self._worker.where == "local" else f" on {self._worker.where}"
        if self.standby:
            self.log.event(f"spare worker {self._worker.pid} started{where}")
        else:
            self.log.new_worker(self._worker.pid)
            if where:
                self.log.event(f"worker {self._worker.pid} runs{where}")
        if self._watcher is not None and self._worker.watch_target is not None:
            self._watcher.watch(self)
        await self._connect()
        await asyncio.shield(step)

    async def _until(self, step: Awaitable[None]) -> None:
        """Wait for one step of the start within the manifest's `timeout`; on any failure
        (cancellation included) kill and reap the process before raising."""
        try:
            async with asyncio.timeout(self.manifest.runtime.timeout):
                await step
        except TimeoutError:
            await self._abort(f"no handshake within {self.manifest.runtime.timeout:g} s")
            raise StartFailed(f"the worker did not become ready within {self.manifest.runtime.timeout:g} s (plugin_runtime.timeout)", exit=self.exit) from None
        except StartFailed as exc:
            await self._abort(exc.message)
            exc.exit = self.exit
            raise
        except BaseException:
            await self._abort("start interrupted")
            raise

    @staticmethod
    def _current_task_cancelling() -> bool:
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

    def _ready(self) -> None:
        self.started_at = time.monotonic()
        self._move(WorkerState.READY)

    async def _connect(self) -> None:
        assert self._worker is not None
        self._open_pipes = 2
        self._stdin = await self._worker.connect(
            MessageProtocol(self._on_message, self._on_stdout_closed, self.max_frame_size), _StderrProtocol(self), self._on_exit,
            self.observe,
        )

    # -- resource watching ----------------------------------------------------
    @property
    def watch_target(self) -> psutil.Process | None:
        return None if self._exited or self._worker is None else self._worker.watch_target

    @property
    def memory_limit(self) -> int | None:
        limit = self.manifest.runtime.memory_limit_mb
        return limit * 1024 * 1024 if limit else None

    def known_processes(self) -> dict[int, psutil.Process]:
        return {proc.pid: proc for proc in self.usage.processes} if self.usage is not None else {}

    async def _look_at_tree(self) -> None:
        target = self.watch_target
        if target is None:
            return
        known = self.known_processes()
        usage = await asyncio.to_thread(lambda: containment.measure(target, containment.parent_map(), known, self.memory_limit))
        if not self._exited:
            self.usage = usage

    def observe(self, usage: TreeUsage) -> None:
        """The watcher's latest look at the tree: keep it, and kill a worker over its limits."""
        if self._exited:
            return
        self.usage = usage
        runtime = self.manifest.runtime
        rss_mb = usage.rss / (1024 * 1024)
        if runtime.memory_limit_mb and rss_mb > runtime.memory_limit_mb:
            self.kill(f"memory limit hit: the worker's processes used {rss_mb:.0f} MB (plugin_runtime.memory_limit_mb = {runtime.memory_limit_mb})")
        elif runtime.cpu_time_limit and usage.cpu_time > runtime.cpu_time_limit:
            self.kill(f"CPU time limit hit: {usage.cpu_time:.1f} s of CPU (plugin_runtime.cpu_time_limit = {runtime.cpu_time_limit:g})")
        elif runtime.max_processes and usage.count > runtime.max_processes:
            self.kill(f"process limit hit: {usage.count} processes in the worker's tree (plugin_runtime.max_processes = {runtime.max_processes})")

    async def _abort(self, reason: str) -> None:
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._kill_and_wait(reason))

    # -- calls --------------------------------------------------------------
    def send_call(self, entry_id: str, args: Mapping[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        """Send one call; the future resolves to the entry's value or a PluginError."""
        if not self.usable:
            raise PluginUnavailable(self.plugin_id, f"worker is {'exiting' if self._exited else self.state.value}")
        self._next_id += 1
        call_id = self._next_id
        # Encoded at once, so the caller's own dict can go on the wire uncopied.
        args = args if type(args) is dict else dict(args)
        try:
            data = self._encoder.encode_call(call_id, entry_id, args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArguments(f"arguments for {self.plugin_id}.{entry_id} cannot be encoded: {exc}") from exc
        except protocol.ProtocolError as exc:
            raise InvalidArguments(f"arguments for {self.plugin_id}.{entry_id} are too large: {exc}") from exc
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[call_id] = _Pending(entry_id, future)
        fault = self._chaos.take_call_fault(entry_id) if self._chaos is not None else None
        if fault is not None:
            data = self._inject_into_call(*fault, Call(call_id, entry_id, args), data)
            if not data:
                return call_id, future
        self._out(data, "call", call_id)
        return call_id, future

    def _inject_into_call(self, phase: Phase, armed_for: str | None, call: Call, data: bytes) -> bytes:
        """Arm a kill at `phase` of this call; the frame to send (empty: send nothing)."""
        assert self._chaos is not None
        if phase is Phase.IN_ENTRY:
            # The worker kills itself: only it knows when the entry has started. It is
            # recorded when the worker dies with the call open (see _finish), and armed
            # again if the call is answered (its entry never ran: bad arguments, cancelled).
            try:
                faulty = self._encoder.encode_call(call.call_id, call.entry_id, call.args, "kill_in_entry")
            except protocol.ProtocolError:  # the fault's few bytes tip the call over the frame limit
                self._chaos.rearm_call_fault(phase, armed_for)
                return data
            self._in_entry[call.call_id] = (armed_for, call.entry_id)
            return faulty
        where = IN_CALL_KILLS[phase]
        self._chaos.record(f"kill_{phase.value}", where, call.call_id, call.entry_id)
        if phase is Phase.BEFORE_DELIVERY:
            self.kill(f"chaos: {where} (call {call.call_id})")
            return b""
        self._kill_on_result.add(call.call_id)
        return data

    def chaos_act(self, action: str, seconds: float | None) -> None:
        """kill / freeze / thaw this worker now, for the chaos API."""
        assert self._chaos is not None
        if action == "kill":
            if self._killer is None and not self._exited:  # one death, one record
                self._chaos.record("kill", "killed now")
            self.kill("chaos: killed")
        elif action == "freeze":
            self._chaos.record("freeze", "until thawed" if seconds is None else f"for {seconds:g} s")
            self._cancel_thaw()
            self._frozen = True
            self._signal(signal.SIGSTOP)
            if seconds is not None:
                self._thaw_timer = self._loop.call_later(seconds, self._thaw)
        elif action == "thaw":
            self._chaos.record("thaw")
            self._thaw()
        else:
            raise ValueError(f"unknown chaos action {action!r}")

    def _thaw(self) -> None:
        self._cancel_thaw()
        self._frozen = False
        self._signal(signal.SIGCONT)

    def _cancel_thaw(self) -> None:
        if self._thaw_timer is not None:
            self._thaw_timer.cancel()
            self._thaw_timer = None

    def abandon(self, call_id: int, grace: float) -> None:
        """The caller gave up (timeout or cancellation): ask the worker to cancel,
        and kill it if the call has not ended within `grace` seconds."""
        if self._pending.pop(call_id, None) is None or not self.alive:
            return
        self._send(Cancel(call_id))
        self._abandoned[call_id] = self._loop.call_later(
            grace, self._kill_for_hang, call_id, grace
        )

    def _kill_for_hang(self, call_id: int, grace: float) -> None:
        # Keep the id: a result racing the kill is a late answer, not a violation.
        self._abandoned[call_id] = None
        if self.alive:
            self.kill(f"a call did not stop within {grace:g} s of its timeout")

    # -- stop / kill --------------------------------------------------------
    async def stop(self, shutdown_timeout: float) -> ExitInfo:
        """Graceful: shutdown message, then SIGTERM after `shutdown_timeout`, then
        SIGKILL 2 s later, to the whole tree. Returns how the worker ended.

        The escalation runs in its own task: a caller that is cancelled (a client
        that hung up) does not leave the worker half-stopped, and a second
        `stop()` joins the first.
        """
        if self._stopper is None:
            self._stopper = self._loop.create_task(self._stop_sequence(shutdown_timeout))
        return await asyncio.shield(self._stopper)

    async def _stop_sequence(self, shutdown_timeout: float) -> ExitInfo:
        if self.state is WorkerState.DEAD:
            return await self.wait_dead()
        if self.state is WorkerState.STARTING:
            return await self._kill_and_wait("stopped while starting")
        self._move(WorkerState.STOPPING)
        # A kill already under way (a hang, a limit, chaos) keeps its reason, and its
        # callers hear WorkerCrashed: the stop did not cause that death.
        self._killed_before_stop = self._killer is not None
        self._death_reason = self._death_reason or "stopped"
        if self._frozen:
            self._thaw()  # a test's freeze must not turn a graceful stop into a SIGKILL
        # The worker gets half the time for calls in flight, then runs its shutdown hooks.
        self._send(Shutdown(shutdown_timeout / 2))
        if await self._wait_dead_for(shutdown_timeout):
            return await self.wait_dead()
        self.log.event(f"worker {self.pid} did not exit within {shutdown_timeout:g} s of shutdown; sending SIGTERM", logging.WARNING)
        # SIGTERM ends the worker without its own cleanup of its children: look at
        # the tree now, so the cleanup after its death finds them.
        await self._look_at_tree()
        self._signal(signal.SIGTERM)
        if await self._wait_dead_for(SIGTERM_GRACE):
            return await self.wait_dead()
        self.log.event(f"worker {self.pid} ignored SIGTERM for {SIGTERM_GRACE:g} s; sending SIGKILL", logging.WARNING)
        return await self._kill_and_wait("stopped (killed after SIGTERM)")

    def kill(self, reason: str) -> None:
        """SIGKILL the worker and all its descendants now.

        The worker's group is stopped first and the worker is killed last: while
        it lives it is the subreaper of everything below it, so nothing can slip
        out of its tree between our look and our kill."""
        if self._worker is None and self._launching is not None:
            # Not launched yet: the launch stops, and start() kills what it launched, if anything.
            self._death_reason = self._death_reason or reason
            self._kill_requested = True
            self._launching.cancel()
            return
        if self._exited or self._worker is None:
            return
        self._death_reason = self._death_reason or reason
        self.log.event(f"killing worker {self.pid}: {reason}", logging.WARNING)
        self._signal(signal.SIGSTOP)  # the group stops now; the walk of the rest reads /proc, off the loop
        if self._killer is None:
            self._killer = self._loop.create_task(self._kill_tree())

    async def _kill_tree(self) -> None:
        assert self._worker is not None
        await self._worker.kill_tree(list(self.known_processes().values()))

    async def _kill_and_wait(self, reason: str) -> ExitInfo:
        self.kill(reason)
        return await self.wait_dead()

    async def wait_dead(self) -> ExitInfo:
        return await asyncio.shield(self._dead)

    async def _wait_dead_for(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._dead)
        except TimeoutError:
            return False
        return True

    def _signal(self, sig: int) -> None:
        if self._worker is not None and not self._exited:
            self._worker.send_signal(sig)

    def _send(self, message: Message) -> None:
        self._out(self._encoder.encode(message), type(message).__name__.lower())

    def _out(self, data: bytes, what: str, call_id: int | None = None) -> None:
        if self._tap is not None and self._tap.chaos.touches_frames:
            self._tap.outgoing(data, what, call_id)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(data)

    # -- incoming -----------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        if self._tap is not None and self._tap.chaos.touches_frames:
            self._tap.incoming(message)
        else:
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        if self._death_error is not None:
            return  # after a violation nothing from this worker is trusted; it is being killed
        if isinstance(message, Result):
            self._on_result(message)
        elif isinstance(message, Log):
            self.log.record(message.level, message.logger, message.text)
        elif isinstance(message, Pong):
            pass  # the supervisor sends no pings yet; an answer to one is harmless
        elif isinstance(message, Ping):
            self._send(Pong(message.nonce))
        elif isinstance(message, Hello) and not self._hello:
            self._hello = True
            try:
                protocol.check_version(message)
            except protocol.ProtocolError as exc:
                self._violation(str(exc))
                return
            self._on_hello(message)
            if not self._hello_seen.done():
                self._hello_seen.set_result(None)
        elif isinstance(message, Ready) and self._hello and not self._handshake.done():
            self.entries = {entry.id: entry for entry in message.entries}
            self._handshake.set_result(None)
        elif isinstance(message, Fatal) and not self._handshake.done():
            if self.standby:
                self.log.event(f"spare worker {self.pid} cannot serve: {message.error.type}: {message.error.message}", logging.WARNING)
            self._handshake.set_exception(
                StartFailed(
                    f"{message.error.type}: {message.error.message}", message.error.traceback,
                    permanent=message.error.type == "SandboxRefused",
                )
            )
        else:
            self._violation(f"unexpected {type(message).__name__.lower()} message")

    def _on_hello(self, hello: Hello) -> None:
        runtime = self.manifest.runtime
        self.protections = {
            **hello.protections,
            "watcher": {
                "memory_limit_mb": runtime.memory_limit_mb or None,
                "cpu_time_limit": runtime.cpu_time_limit or None,
                "max_processes": runtime.max_processes or None,
            },
        }
        reported = hello.protections.get("sandbox")
        sandbox = {**reported} if isinstance(reported, dict) else {"abi": 0, "reason": "not reported by the worker"}
        sandbox["requested"] = self.sandbox
        self.protections["sandbox"] = sandbox
        if self.sandbox == "on" and not sandbox.get("abi"):
            self.log.event(f"the sandbox was requested but is NOT applied: {sandbox.get('reason') or 'unknown'}", logging.WARNING)

    def _on_result(self, result: Result) -> None:
        if result.call_id in self._in_entry and self._chaos is not None:
            # Answered: the entry never ran (or the worker could not kill itself). The fault waits for another call.
            self._chaos.rearm_call_fault(Phase.IN_ENTRY, self._in_entry.pop(result.call_id)[0])
        if result.call_id in self._kill_on_result:
            # Chaos: the answer reached the supervisor and goes no further; the call
            # stays pending and fails with WorkerCrashed when the worker dies.
            self.kill(f"chaos: killed after the entry returned, before its result reached the caller (call {result.call_id})")
            return
        pending = self._pending.pop(result.call_id, None)
        if pending is None:
            if result.call_id in self._abandoned:
                timer = self._abandoned.pop(result.call_id)
                if timer is not None:
                    timer.cancel()
                return  # a late answer for a caller that gave up: the call ended, drop it
            self._violation(f"result for unknown call id {result.call_id}")
            return
        if pending.future.done():
            return
        if result.ok:
            pending.future.set_result(result.value)
        else:
            assert result.error is not None
            pending.future.set_exception(error_from_wire(self.plugin_id, pending.entry_id, result.error))

    def _violation(self, detail: str) -> None:
        if self._death_error is None:
            self._death_error = ProtocolError(f"plugin {self.plugin_id!r} broke the protocol: {detail}")
        if not self._handshake.done():
            self._fail_start(StartFailed(f"protocol error during handshake: {detail}"))
        self.kill(f"protocol error: {detail}")

    def _on_stdout_closed(self, error: BaseException | None) -> None:
        if error is not None:
            self._violation(str(error))
        elif not self._exited:
            # A worker that exits closes its stdout a moment before its exit is
            # seen; one still alive after that has shut the only way an answer
            # can come, and every call to it would wait for its timeout.
            self._loop.call_later(STDOUT_EOF_GRACE, self._check_closed_while_running)
        self._pipe_closed()

    def _check_closed_while_running(self) -> None:
        if not self._exited and self.state is not WorkerState.STOPPING:
            self._violation("it closed its protocol output while still running")

    def _pipe_closed(self) -> None:
        self._open_pipes -= 1
        if self._open_pipes <= 0:
            self._drained.set()

    # -- death --------------------------------------------------------------
    def _on_exit(self, returncode: int | None, reason: str | None) -> None:
        """The launcher saw the worker exit (and reaped it)."""
        if self._exited:
            return
        self._exited = True
        if self._watcher is not None:
            self._watcher.unwatch(self)
        if reason:
            self._death_reason = self._death_reason or reason
        # Keep a reference: the loop holds tasks weakly.
        self._finish_task = self._loop.create_task(self._finish(returncode))

    async def _finish(self, returncode: int | None) -> None:
        """Tell everyone the worker is dead. `_dead` is resolved whatever goes wrong here."""
        assert self._worker is not None
        self._record_kills_in_entry(returncode)
        self.exit = ExitInfo(self._worker.pid, returncode, self._death_reason or self._reason_from_status(returncode))
        was_stopping = self.state is WorkerState.STOPPING and not self._killed_before_stop
        self._move(WorkerState.DEAD)
        try:
            await self._collect_remains()
            if self._tap is not None:
                # What a delay still holds had left the worker: a pipe would hand it over now.
                self._tap.flush_incoming()
            self.log.end_stderr()
            # A worker that ended as asked is news; one that died is a warning.
            spare = "spare " if self.standby else ""  # a spare that never took over
            self.log.event(spare + self.exit.describe(), logging.INFO if was_stopping or self.exit.reason == "exited" else logging.WARNING)
            if self._on_death is not None:
                # Before the callers hear of it, so the slot's status is already current.
                try:
                    self._on_death(self, self.exit)
                except Exception:  # the callers below must be answered whatever happens
                    self.log.logger.exception("on_death callback failed")
            self._answer_everyone(was_stopping)
        finally:
            if self._tap is not None:
                self._tap.close()
            self._worker.close(reusable=not was_stopping)
            self._dead.set_result(self.exit)

    async def _collect_remains(self) -> None:
        # Frames and stderr written just before death may still be in the pipes.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PIPE_DRAIN_TIMEOUT):
                await self._drained.wait()
        # Descendants that left the process group (setsid, double fork): the launcher
        # finds them in the watcher's last look at the tree and by the worker's tag.
        assert self._worker is not None
        strays = await self._worker.cleanup(list(self.known_processes().values()))
        # SIGKILL is delivered asynchronously: make sure they are really gone
        # before anyone is told this worker is dead.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STRAY_KILL_TIMEOUT):
                while any(containment.alive(p) for p in strays):  # noqa: ASYNC110 - no event exists for a non-child's death
                    await asyncio.sleep(0.005)

    def _record_kills_in_entry(self, returncode: int | None) -> None:
        """The worker died with kill_in_entry calls open: if it killed itself (SIGKILL that
        we did not send), that is the fault landing; otherwise it never got its chance,
        and the fault waits for another call."""
        if self._chaos is None or not self._in_entry:
            return
        if returncode == -signal.SIGKILL and self._killer is None:
            where = IN_CALL_KILLS[Phase.IN_ENTRY]
            for call_id, (_, entry_id) in self._in_entry.items():
                self._chaos.record("kill_in_entry", where, call_id, entry_id)
            self._death_reason = self._death_reason or f"chaos: {where} (call {next(iter(self._in_entry))})"
        else:
            for armed_for, _ in self._in_entry.values():
                self._chaos.rearm_call_fault(Phase.IN_ENTRY, armed_for)
        self._in_entry.clear()

    def _reason_from_status(self, returncode: int | None) -> str:
        runtime = self.manifest.runtime
        if returncode is None:
            return "crashed (exit status unknown)"
        if returncode == 0:
            return "exited"
        if returncode == EXIT_OUT_OF_MEMORY:
            limit = f"plugin_runtime.memory_limit_mb = {runtime.memory_limit_mb}" if runtime.memory_limit_mb else "no memory_limit_mb set"
            return f"memory limit hit: MemoryError in the worker ({limit})"
        if returncode == EXIT_PROTOCOL_ERROR:
            return "the worker could not decode what the supervisor sent"
        if returncode == EXIT_NO_RESOURCES:
            return "out of resources: the worker could not start a thread (see its log)"
        if returncode == -signal.SIGXCPU or (runtime.cpu_time_limit and returncode == -signal.SIGKILL and self._over_cpu_limit()):
            return f"CPU time limit hit: the kernel's RLIMIT_CPU stopped it (plugin_runtime.cpu_time_limit = {runtime.cpu_time_limit:g})"
        return "crashed"

    def _over_cpu_limit(self) -> bool:
        return self.usage is not None and self.usage.cpu_time >= self.manifest.runtime.cpu_time_limit

    def _answer_everyone(self, was_stopping: bool) -> None:
        assert self.exit is not None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(self._death_error_for(was_stopping))
        self._pending.clear()
        for timer in self._abandoned.values():
            if timer is not None:
                timer.cancel()
        self._abandoned.clear()
        if not self._handshake.done():
            # No `fatal` came: the stderr is all we have (a segfault at import, os._exit in __init__).
            self._fail_start(
                StartFailed(
                    f"the worker died during start-up: {self.exit.describe()}",
                    "\n".join(stderr_excerpt(self.log.stderr_tail(), limit=40)),
                    exit=self.exit,
                )
            )
        for step in (self._handshake, self._hello_seen):
            if step.done() and not step.cancelled():
                step.exception()  # mark it read: nobody may be waiting for it any more

    def _fail_start(self, error: StartFailed) -> None:
        for step in (self._hello_seen, self._handshake):
            if not step.done():
                step.set_exception(error)

    def _death_error_for(self, was_stopping: bool) -> PluginError:
        if self._death_error is not None:
            return self._death_error
        if was_stopping:
            return PluginUnavailable(self.plugin_id, "the plugin was stopped while the call was in flight")
        return WorkerCrashed(self.plugin_id, self.exit, self.log.stderr_tail())


class _StderrProtocol(asyncio.Protocol):
    def __init__(self, handle: WorkerHandle) -> None:
        self.handle = handle

    def data_received(self, data: bytes) -> None:
        self.handle.log.feed_stderr(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.handle._pipe_closed()
