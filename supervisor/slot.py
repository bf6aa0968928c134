"""One plugin across its workers: when to start, restart, give up; and the call path.

Policy lives here (the manifest, the restart budget, backoff); the mechanism
of one process lives in `WorkerHandle`. A slot replaces a dead worker with a
new handle; a handle never restarts.

The call path: check state -> take a place in the queue (bounded by
`max_queue`) -> wait for one of `max_concurrency` places -> wait for a
running worker -> send -> await the result, all under one deadline. On the
deadline the caller gets `CallTimeout` at once; the worker is asked to cancel
and is killed if the call has not ended within `cancel_grace`. A call is never
re-sent to a new worker (at-most-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import EntryInfo
from supervisor.chaos import Injection, PluginChaos
from supervisor.deadlines import Deadlines
from supervisor.errors import (
    CallTimeout,
    EntryNotFound,
    ExitInfo,
    ManifestError,
    PluginOverloaded,
    PluginUnavailable,
)
from supervisor.handle import StartFailed, WorkerHandle
from supervisor.launchers import LOCAL, LaunchedWorker, Launcher, LaunchError, LaunchSpec
from supervisor.lifecycle import PLUGIN_MOVES, PluginState, check_move
from supervisor.logs import PluginLog
from supervisor.manifest import Manifest, load_manifest
from supervisor.places import Places
from supervisor.policy import Backoff, Clock, RestartBudget, sleep_of
from supervisor.watch import ResourceWatcher


@dataclass(frozen=True, slots=True)
class SlotOptions:
    """Supervisor-wide settings every slot shares."""

    env: dict[str, str]
    max_frame_size: int
    cancel_grace: float
    log_dir: Path | None
    clock: Clock = time.monotonic
    sandbox: str = "off"                    # the least sandbox every plugin gets
    network: bool = True                    # False: no sandboxed plugin may connect, whatever its plugin.toml says
    watcher: ResourceWatcher | None = None  # measures every worker's tree; enforces the limits
    launcher: Launcher = LOCAL              # where a plugin's worker runs unless its plugin.toml says
    env_allow: frozenset[str] = frozenset() # the extra names of `env`, for launchers that build it on another node

    def launcher_for(self, name: str | None) -> Launcher:
        """The launcher plugin.toml's `launcher` names (None: the supervisor's own)."""
        if name is None or name == self.launcher.name:
            return self.launcher
        if name == LOCAL.name:
            return LOCAL
        return _NoLauncher(name)


class _NoLauncher:
    """A plugin asks for a launcher this supervisor was not given: its start fails, and says how to give it."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def launch(self, spec: LaunchSpec, timeout: float) -> LaunchedWorker:
        raise LaunchError(
            f"{spec.manifest.path}: plugin_runtime.launcher = {self.name!r}, but this supervisor has no {self.name} launcher "
            f"(Supervisor(launcher=RayLauncher(ADDRESS)), or neko-supervisor serve --ray ADDRESS)",
            permanent=True,
        )

    async def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """An immutable snapshot of one plugin. `state` compares equal to its string value."""

    id: str
    name: str
    version: str
    state: PluginState
    pid: int | None
    restarts: int
    last_exit: ExitInfo | None
    error: str | None          # why it is failed / last start failure, if any
    entries: tuple[EntryInfo, ...]
    uptime: float | None       # seconds the current worker has been ready
    calls: int
    failures: int
    in_flight: int
    queued: int
    folder: str
    log_path: str | None
    memory_rss: int | None     # bytes, the worker's whole tree, as of the watcher's last look
    cpu_time: float | None     # CPU seconds of the current worker's tree
    processes: int | None      # processes in the worker's tree, the worker included
    protections: dict[str, Any]  # what confines the current worker, as it reported it (see README, Security)
    warnings: tuple[str, ...]  # about its plugin.toml: keys ignored that look like typos
    injections: tuple[Injection, ...]  # faults injected through sup.chaos(id), oldest first
    spare_pid: int | None = None  # spare_worker = true: the worker waiting to take over, if one is ready
    log_lines: int = 0  # lines ever added to its log tail: it grew if this did (see Supervisor.logs_after)
    where: str | None = None  # where the current worker runs: "local", "ray node 10.0.0.7 (5f3a...)"


SANDBOX_STRICTNESS = ("off", "on", "required")
SPARE_MIN_LIFE = 1.0  # seconds a spare must have waited for its death to be replaced at once


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        info = folder.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def strictest_sandbox(manifest: str | None, operator: str) -> str:
    """The operator's setting is a floor: a plugin.toml can ask for more, never for less
    (a sandboxed plugin can write its own plugin.toml)."""
    return max(manifest or "off", operator, key=SANDBOX_STRICTNESS.index)


class PluginSlot:
    def __init__(self, plugin_id: str, folder: Path, manifest: Manifest | None, error: ManifestError | None, options: SlotOptions) -> None:
        self.id = plugin_id
        self.folder = folder
        self.manifest = manifest
        self.options = options
        self.state = PluginState.STOPPED
        self.error: str | None = str(error) if error else None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.calls = 0
        self.failures = 0
        self.log = PluginLog(plugin_id, options.log_dir / f"{plugin_id}.log" if options.log_dir else None)
        self._handle: WorkerHandle | None = None
        self._spare: WorkerHandle | None = None              # spare_worker = true: the next worker, waiting
        self._spare_task: asyncio.Task[None] | None = None
        self._spare_folder: tuple[int, int] | None = None   # (st_dev, st_ino) of the folder it started on
        self._spare_ready_at = 0.0
        self._entries: dict[str, EntryInfo] = {}
        self._runner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()
        self._stop_requested = False
        self.closing = False  # the supervisor is stopping for good: no start from now on
        self._queued = 0
        self._deadlines = Deadlines()
        self._backoff = Backoff()
        self._apply_runtime()
        if error is not None:
            self._move(PluginState.FAILED)
        for warning in manifest.warnings if manifest is not None else ():
            self.log.event(warning, logging.WARNING)
        self._lifecycle_lock = asyncio.Lock()
        self._stopping: asyncio.Task[None] | None = None
        self.chaos = PluginChaos(plugin_id)
        self.chaos._act = self._chaos_act
        self.chaos._entries = lambda: self._entries

    # -- state ----------------------------------------------------------------
    def _move(self, new: PluginState) -> None:
        if new is self.state:
            return
        self.state = check_move(PLUGIN_MOVES, self.state, new)
        self._notify()

    def _notify(self) -> None:
        """Wake everyone waiting for a state change (each waits on the event of its time)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def status(self) -> PluginStatus:
        handle = self._handle
        running = handle is not None and self.state is PluginState.RUNNING
        now = time.monotonic()  # not the loop's clock: status() must work from any thread or none
        usage = handle.usage if handle is not None and handle.alive else None
        return PluginStatus(
            id=self.id,
            name=self.manifest.name if self.manifest else self.id,
            version=self.manifest.version if self.manifest else "",
            state=self.state,
            pid=handle.pid if handle is not None and handle.alive else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            error=self.error,
            entries=tuple(self._entries.values()),
            uptime=(now - handle.started_at) if running and handle and handle.started_at is not None else None,
            calls=self.calls,
            failures=self.failures,
            in_flight=handle.in_flight if handle is not None else 0,
            queued=self._queued,
            folder=str(self.folder),
            log_path=str(self.log.path) if self.log.path else None,
            memory_rss=usage.rss if usage is not None else None,
            cpu_time=usage.cpu_time if usage is not None else None,
            processes=usage.count if usage is not None else None,
            protections=dict(handle.protections) if handle is not None and handle.alive else {},
            warnings=self.manifest.warnings if self.manifest is not None else (),
            injections=self.chaos.injections,
            spare_pid=self._spare.pid if self._spare is not None and self._spare.alive else None,
            log_lines=self.log.appended,
            where=handle.where if handle is not None and handle.alive else None,
        )

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Start the plugin; returns once it is running or its first start failed.

        Starting from `failed` resets the restart budget: it is an operator's
        decision to try again. The lock covers only the decision, so `stop()`
        can interrupt a slow start.
        """
        async with self._lifecycle_lock:
            settled = self._begin_start()
        await settled.wait()

    def _begin_start(self) -> asyncio.Event:
        if self.closing:
            raise PluginUnavailable(self.id, "the supervisor is stopping")
        if self._runner is not None and not self._runner.done():
            return self._settled
        if self.manifest is None:
            self._reload_manifest()  # a broken plugin.toml may have been fixed since
        assert self.manifest is not None
        if not self.manifest.runtime.enabled:
            raise PluginUnavailable(self.id, f"disabled in {self.manifest.path} (plugin_runtime.enabled = false)")
        if self.state is PluginState.FAILED:
            self._reset_restart_policy()
        self._stop_requested = False
        self._settled = asyncio.Event()
        self.error = None
        self._move(PluginState.STARTING)
        self._runner = asyncio.create_task(self._run(), name=f"plugin-{self.id}")
        self._runner.add_done_callback(self._runner_done)
        return self._settled

    def _runner_done(self, runner: asyncio.Task[None]) -> None:
        # The loop must never die silently: a bug in it fails this plugin, loudly.
        if runner.cancelled() or runner.exception() is None:
            return
        exc = runner.exception()
        self._settled.set()
        self.error = f"internal error in the supervisor: {exc!r}"
        if self.state is not PluginState.FAILED:
            self.state = PluginState.FAILED  # bypasses _move(): the machine itself is what broke
            self._notify()
        for handle in (self._handle, self._spare):
            if handle is not None:
                handle.kill("supervision loop crashed")
        self.log.event(f"supervision loop crashed: {exc!r}", logging.ERROR)

    async def stop(self) -> None:
        """Stop the plugin's worker gracefully. Runs to the end even if the caller
        is cancelled (a client that hung up must not leave a worker half-stopped);
        concurrent calls join the same stop."""
        if self._stopping is None or self._stopping.done():
            self._stopping = asyncio.create_task(self._stop_under_lock(), name=f"stop-{self.id}")
        await asyncio.shield(self._stopping)

    async def _stop_under_lock(self) -> None:
        async with self._lifecycle_lock:
            self._stop_requested = True
            self._settled.set()  # nobody waits for a start that is being stopped
            await self._dismiss_spare()
            handle, runner = self._handle, self._runner
            if handle is not None and handle.alive and self.manifest is not None:
                await handle.stop(self.manifest.runtime.shutdown_timeout)
            if runner is not None and not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            self._runner = None
            if self.state is not PluginState.STOPPED and not (self.state is PluginState.FAILED and self.manifest is None):
                self._move(PluginState.STOPPED)

    async def kill(self) -> None:
        """A forced stop: SIGKILL the worker's tree now (no shutdown hooks, no grace) and
        end stopped. A graceful stop under way finishes as soon as the worker is dead."""
        self._stop_requested = True
        self._settled.set()
        handles = [handle for handle in (self._handle, self._spare) if handle is not None and handle.alive]
        for handle in handles:
            handle.kill("forced stop")
        for handle in handles:
            await handle.wait_dead()
        await self.stop()

    async def restart(self) -> None:
        """Stop, reset the restart budget, start again (also from `failed`)."""
        await self.stop()
        self._reset_restart_policy()
        await self.start()

    def _reset_restart_policy(self) -> None:
        self._budget.reset()
        self._backoff.reset()

    def close(self) -> None:
        self.log.close()

    def _reload_manifest(self) -> None:
        try:
            self.manifest = load_manifest(self.folder / "plugin.toml")
        except ManifestError as exc:
            self.error = str(exc)
            raise PluginUnavailable(self.id, str(exc)) from exc
        if self.manifest.id != self.id:
            raise PluginUnavailable(self.id, f"plugin.id changed to {self.manifest.id!r}; restart the supervisor")
        self._apply_runtime()

    def _apply_runtime(self) -> None:
        """Concurrency places and restart budget, from the manifest (none while it is broken)."""
        runtime = self.manifest.runtime if self.manifest else None
        self._places = Places(runtime.max_concurrency if runtime else 1)
        self._budget = RestartBudget(runtime.max_restarts if runtime else 0, runtime.restart_window if runtime else 60.0, self.options.clock)

    async def _run(self) -> None:
        """The slot's supervision loop: one iteration per worker. However it ends
        (failed, stopped, cancelled), no spare outlives it."""
        try:
            await self._run_workers()
        finally:
            await asyncio.shield(self._dismiss_spare())

    async def _run_workers(self) -> None:
        assert self.manifest is not None
        runtime = self.manifest.runtime
        while True:
            self._move(PluginState.STARTING)
            spare = await self._take_spare()
            handle = spare or self._new_handle()
            self._handle = handle
            try:
                await (handle.activate(self.chaos) if handle is spare else handle.start())
            except StartFailed as exc:
                self.last_exit = exc.exit
                self.error = exc.message + (f"\n{exc.traceback}" if exc.traceback else "")
                self.log.event(f"start failed: {exc.message}", logging.WARNING)
                self._settled.set()
                if self._stop_requested:
                    return
                if exc.permanent:
                    self._give_up("start refused")
                    return
                if runtime.restart == "never" or not self._budget.record_crash():
                    self._give_up("start failed" + ("" if runtime.restart == "never" else "; restart budget spent"))
                    return
                self._move(PluginState.BACKOFF)
                await sleep_of(self.options.clock)(self._backoff.next_delay())
                self.restarts += 1
                continue
            self._backoff.reset()
            self._entries = handle.entries
            self.error = None
            self._move(PluginState.RUNNING)
            self._settled.set()
            if runtime.spare_worker and runtime.restart != "never":  # "never": no restart could use it
                self._prepare_spare()
            await handle.wait_dead()
            # _worker_died has already decided: STARTING means "go again".
            if self._stop_requested or self.state is not PluginState.STARTING:
                return

    def _worker_died(self, handle: WorkerHandle, exit_info: ExitInfo) -> None:
        """Called by a handle the moment its worker is found dead, before any caller hears of it,
        so `status()` is already up to date when a call fails with WorkerCrashed."""
        if handle is self._spare:
            self._spare_died()
            return
        if handle is not self._handle or handle.started_at is None:
            return  # a failed start: the loop in _run handles it
        self.last_exit = exit_info
        if self._stop_requested or self.manifest is None:
            return
        runtime = self.manifest.runtime
        clean = exit_info.reason == "exited"  # exit code 0, not killed by us, no protocol violation
        if runtime.restart == "never" or (runtime.restart == "on-failure" and clean):
            if clean:
                self._move(PluginState.STOPPED)
            else:
                self._give_up(f"{exit_info.describe()}; restart policy is 'never'")
            return
        if not self._budget.record_crash():
            self._give_up(f"{exit_info.describe()}; more than {runtime.max_restarts} crashes within {runtime.restart_window:g} s")
            return
        self.restarts += 1
        self._move(PluginState.STARTING)

    def _new_handle(self, *, standby: bool = False) -> WorkerHandle:
        assert self.manifest is not None
        runtime = self.manifest.runtime
        return WorkerHandle(
            self.manifest, self.log, env=self.options.env, max_frame_size=self.options.max_frame_size,
            on_death=self._worker_died, sandbox=strictest_sandbox(runtime.sandbox, self.options.sandbox), watcher=self.options.watcher,
            network=runtime.network and self.options.network, chaos=None if standby else self.chaos, standby=standby,
            launcher=self.options.launcher_for(runtime.launcher), env_allow=self.options.env_allow,
        )

    # -- the spare worker (spare_worker = true) ------------------------------------------
    def _prepare_spare(self) -> None:
        """Start the next worker now, as far as its hello, so that a restart only loads the plugin."""
        if self.closing or self._stop_requested or (self._spare_task is not None and not self._spare_task.done()):
            return
        if self._spare is not None and self._spare.alive:
            return
        self._spare_task = asyncio.create_task(self._start_spare(), name=f"spare-{self.id}")

    async def _take_spare(self) -> WorkerHandle | None:
        """The spare, if it can take over: alive, waiting, and started on the plugin folder
        as it is now (one replaced by a deploy would load the old code, or none)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.alive and spare.standby and self._spare_folder == _identity(self.folder):
            return spare
        await spare.dismiss()
        return None

    async def _start_spare(self) -> None:
        spare = self._new_handle(standby=True)
        self._spare_folder = _identity(self.folder)
        try:
            await spare.start()
        except Exception as exc:  # StartFailed, or anything else: a spare is never worth a crash
            # No spare this time: the next restart spawns a worker as usual.
            self.log.event(f"spare worker not ready: {exc.message if isinstance(exc, StartFailed) else repr(exc)}", logging.WARNING)
            return
        if self.closing or self._stop_requested:
            await spare.dismiss()
            return
        self._spare = spare
        self._spare_ready_at = time.monotonic()

    def _spare_died(self) -> None:
        """A spare died while it waited (the watcher, an outside kill): make another, unless
        it lived under a second (then the next restart spawns a worker as usual)."""
        self._spare = None
        if time.monotonic() - self._spare_ready_at >= SPARE_MIN_LIFE and self.state is PluginState.RUNNING:
            self._prepare_spare()

    async def _dismiss_spare(self) -> None:
        task, spare = self._spare_task, self._spare
        self._spare_task = self._spare = None
        if task is not None and not task.done():
            task.cancel()  # a spare still starting is killed by its own start()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if spare is not None:
            await spare.dismiss()

    def _chaos_act(self, action: str, seconds: float | None) -> bool:
        handle = self._handle
        if handle is None or not handle.alive or handle.pid is None:
            return False
        handle.chaos_act(action, seconds)
        return True

    def _give_up(self, reason: str) -> None:
        self.error = reason if not self.error else f"{reason}: {self.error}"
        self.log.event(f"plugin failed: {reason}", logging.ERROR)
        self._move(PluginState.FAILED)

    async def wait_for_state(self, states: frozenset[PluginState]) -> PluginState:
        """Return as soon as the plugin is in one of `states` (the caller bounds the wait)."""
        while self.state not in states:
            await self._changed.wait()
        return self.state

    # -- calls ------------------------------------------------------------------
    def entry_timeout(self, entry_id: str) -> float | None:
        entry = self._entries.get(entry_id)
        return entry.timeout if entry is not None else None

    async def call(self, entry_id: str, args: Mapping[str, Any], timeout: float | None) -> Any:
        if self.manifest is None or self.state in (PluginState.FAILED, PluginState.STOPPED):
            raise PluginUnavailable(self.id, self._unavailable_reason())
        if self._entries and entry_id not in self._entries:
            raise EntryNotFound(self.id, entry_id, list(self._entries))
        runtime = self.manifest.runtime
        if timeout is None:
            timeout = self.entry_timeout(entry_id) or runtime.call_timeout
        handle = self._ready_handle()
        places = self._places
        if handle is None or not places.take_now():
            if self._queued >= runtime.max_queue and places.locked:
                raise PluginOverloaded(self.id, runtime.max_queue)
            handle = None
        deadline = asyncio.get_running_loop().time() + timeout
        self.calls += 1
        try:
            if handle is None:
                return await self._call_after_waiting(entry_id, args, timeout, deadline)
            # The common case, inline (no coroutine per layer): a place is free and the
            # worker ready, so the only wait is for the result, under a deadline of the heap.
            try:
                call_id, future = handle.send_call(entry_id, args)
                expiry = self._deadlines.add(deadline, self._expire, handle, call_id, future, entry_id, timeout)
                try:
                    return await future
                except asyncio.CancelledError:
                    if future.done() and not future.cancelled():
                        future.exception()  # a timeout in the same turn: read, or asyncio logs it as lost
                    handle.abandon(call_id, self.options.cancel_grace)  # the caller's own cancellation
                    raise
                finally:
                    self._deadlines.remove(expiry)
            finally:
                places.give_back()
        except BaseException:
            self.failures += 1
            raise

    def _expire(self, handle: WorkerHandle, call_id: int, future: asyncio.Future[Any], entry_id: str, timeout: float) -> None:
        """A call's deadline passed: the caller gets CallTimeout now; the worker is asked
        to cancel the call, and killed if it has not ended within `cancel_grace`."""
        if future.done():
            return  # its result came in this same turn of the loop: the caller has it
        # The caller's answer first: if asking the worker to cancel fails, nobody may be left waiting.
        future.set_exception(CallTimeout(self.id, entry_id, timeout))
        handle.abandon(call_id, self.options.cancel_grace)

    async def _call_after_waiting(self, entry_id: str, args: Mapping[str, Any], timeout: float, deadline: float) -> Any:
        # One deadline over the whole path (queue, worker start, the call itself).
        # Only calls that must wait take this path, so its timer per call is rare.
        try:
            async with asyncio.timeout_at(deadline):
                places = self._places  # a reload of plugin.toml may replace it meanwhile
                self._queued += 1
                try:
                    await places.take()
                finally:
                    self._queued -= 1
                try:
                    handle = self._ready_handle() or await self._running_handle()
                    call_id, future = handle.send_call(entry_id, args)
                    try:
                        return await future
                    except asyncio.CancelledError:
                        # Our deadline or the caller's own cancellation: either way
                        # the worker is asked to stop the call, and killed if it will not.
                        handle.abandon(call_id, self.options.cancel_grace)
                        raise
                finally:
                    places.give_back()
        except TimeoutError:
            raise CallTimeout(self.id, entry_id, timeout) from None

    def _ready_handle(self) -> WorkerHandle | None:
        handle = self._handle
        if self.state is PluginState.RUNNING and handle is not None and handle.usable:
            return handle
        return None

    async def _running_handle(self) -> WorkerHandle:
        """Wait until a worker is ready (through starts and restarts), or raise if the plugin is gone."""
        while True:
            handle = self._ready_handle()
            if handle is not None:
                return handle
            if self.state in (PluginState.FAILED, PluginState.STOPPED):
                raise PluginUnavailable(self.id, self._unavailable_reason())
            await self._changed.wait()

    def _unavailable_reason(self) -> str:
        if self.state is PluginState.FAILED:
            return f"failed: {self.error}" if self.error else "failed"
        if self.manifest is not None and not self.manifest.runtime.enabled:
            return "disabled in plugin.toml"
        return "stopped"
