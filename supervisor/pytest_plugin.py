"""pytest fixtures for tests that run plugins under a `Supervisor`.

Registered through the `pytest11` entry point `neko_supervisor`, so installing
neko-supervisor makes them available; `-p no:neko_supervisor` turns them off.
Nothing here is autouse and no hook is defined: a run that does not ask for a
fixture is unchanged. The module needs neither pytest-asyncio nor anyio (use
whichever runs your async tests), and imports the supervisor's modules only
when a fixture or helper is used (loading it still runs `supervisor/__init__.py`).

    from supervisor.pytest_plugin import wait_for_restart

    async def test_save(neko_supervisor):
        async with neko_supervisor("plugins/persistent") as sup:       # one plugin, or a plugins folder
            assert await sup.call("persistent", "save", {"key": "a", "value": "b"}) == {"saved": True}

    async def test_budget(neko_supervisor, neko_clock):
        async with neko_supervisor("plugins/faults/import_error", clock=neko_clock) as sup:
            await sup.wait_for_state("import_error", "failed")          # backoff slept on neko_clock
        assert neko_clock() > 0

    async def test_restart(neko_supervisor):
        async with neko_supervisor("plugins/faults/crash") as sup:
            with pytest.raises(WorkerCrashed):
                await sup.call("crash", "crash")
            await wait_for_restart(sup, "crash", after=0)               # running again, restarts == 1

Fixtures (function scope):

- `neko_clock`: a fresh `FakeClock`. Pass it as `clock=`: the restart budget
  reads it and the backoff between failed starts sleeps on it (at once), so
  "more than 5 crashes within 60 s" needs neither 60 s nor the backoff's
  seconds. Call timeouts and start timeouts stay on the event loop's clock.
- `neko_supervisor`: a factory, `neko_supervisor(path, **options)` -> a
  `Supervisor` to use as `async with`. `path` is a plugins folder (it holds
  `*/plugin.toml`), used in place, or one plugin folder (it holds
  `plugin.toml`), which is copied first, without `__pycache__`, into a private
  plugins folder under `tmp_path`: the plugin's runtime files (`data.db`, ...)
  stay out of the source tree and every test starts from the same plugin.
  `options` go to `Supervisor(...)`; `log_dir` defaults to a folder under `tmp_path`.

At teardown the `neko_supervisor` fixture fails the test (as an error at
teardown), after cleaning up, if

- a supervisor it made was started and never stopped (`async with` forgotten).
  Teardown is sync: it stops the supervisor on the loop it was started on if
  that loop is still open (a module or session loop), else (pytest-asyncio's
  function loop and `asyncio.run` are closed by then) kills its processes; or
- a process started during the test is still there: a live process carrying a
  worker's tag (`process.TAG_VARIABLE`, which every worker and its descendants
  inherit) that is a descendant of the test process or was started by a
  supervisor from this fixture; or a zombie child of the test process (nobody
  else will reap it; a zombie reparented elsewhere runs no code and is not ours).
  Supervisors from this fixture mark their workers with this test's own id
  (`RUN_VARIABLE` in their environment), so tests running in parallel (xdist)
  never see each other's workers. A longer-lived supervisor of the test
  process (session scope) whose plugin restarts during the test counts too.
  What is left behind is killed, and reaped if it is a child of ours.

Helpers: `Supervisor.wait_for_state(plugin_id, *states, timeout=...)` waits for
a state ("running", "failed", ...); `wait_for_restart` below waits for the
supervisor to have restarted a plugin. Both wake on state changes; neither polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    import psutil

    from supervisor.policy import FakeClock
    from supervisor.slot import PluginStatus
    from supervisor.supervisor import Supervisor

# Every worker of a supervisor made by the fixture carries this test's id in
# this variable (passed through `env_allow`), and so do its descendants.
RUN_VARIABLE = "NEKO_SUPERVISOR_PYTEST_RUN"

# How long teardown waits for what it killed to be gone (and reaps its own children).
KILL_WAIT = 5.0


class SupervisorFactory(Protocol):
    """The `neko_supervisor` fixture: `async with neko_supervisor(path, runtime=None, **options) as sup:`.

    `runtime` sets `[plugin_runtime]` keys in the copy of one plugin folder (a higher
    `max_restarts` for a test that kills often, say); `options` go to `Supervisor`."""

    def __call__(self, path: str | os.PathLike[str], /, *, runtime: dict[str, Any] | None = None, **options: Any) -> Supervisor: ...


@pytest.fixture
def neko_clock() -> FakeClock:
    """A fresh FakeClock: pass it as `neko_supervisor(path, clock=neko_clock)`."""
    from supervisor.policy import FakeClock

    return FakeClock()


@pytest.fixture
def neko_supervisor(tmp_path: Path) -> Iterator[SupervisorFactory]:
    """`async with neko_supervisor(path, **options) as sup:` starts a Supervisor on a
    plugins folder, or on one plugin folder (copied under tmp_path), and stops it.
    The test fails at teardown if it forgot `async with` or left a process behind."""
    run = _TestRun(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        # In the environment for the whole test, not only while a Supervisor is
        # built: it does not matter when the supervisor reads its workers' environment.
        patch.setenv(RUN_VARIABLE, run.id)
        yield run.supervisor
    run.check()


async def wait_for_restart(sup: Supervisor, plugin_id: str, *, after: int, timeout: float = 10.0) -> PluginStatus:
    """Wait until the supervisor has restarted `plugin_id` more than `after` times
    (`status().restarts > after`) and the plugin is running again; returns its status.

    Typically `after` is `status().restarts` read before the crash. Only the
    supervisor's own restarts count (after a crash or a failed start), not
    `restart()`. Raises `TimeoutError` after `timeout` seconds, and
    `PluginUnavailable` at once if the plugin is failed or stopped, since no
    restart will come then.

    Event-driven: it waits with `wait_for_state` for the state to leave the one
    it has just read, then looks again. That misses nothing as long as the
    plugin cannot leave a state and come back to it before this task runs; for
    "running" that would take a whole worker start, so it cannot happen.
    """
    from supervisor.errors import PluginUnavailable
    from supervisor.lifecycle import PluginState

    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = sup.status(plugin_id)
        if status.restarts > after and status.state is PluginState.RUNNING:
            return status
        if status.state in (PluginState.FAILED, PluginState.STOPPED):
            detail = f": {status.error}" if status.error else ""
            raise PluginUnavailable(
                plugin_id, f"{status.state.value} after {status.restarts} restarts while waiting for restart {after + 1}{detail}"
            )
        others = [state for state in PluginState if state is not status.state]
        try:
            await sup.wait_for_state(plugin_id, *others, timeout=max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise TimeoutError(
                f"plugin {plugin_id!r} has {status.restarts} restarts and is {status.state.value!r} after {timeout:g} s"
                f" (waited for restart {after + 1} and running)"
            ) from None


# -- the factory and its checks ---------------------------------------------------


@dataclasses.dataclass
class _Lifetime:
    """What the test did with one supervisor from the factory."""

    plugins_dir: Path
    supervisor: Supervisor | None = None
    loop: asyncio.AbstractEventLoop | None = None  # where it was started
    started: bool = False
    stopped: bool = False


@functools.cache
def _supervisor_class() -> Callable[..., Supervisor]:
    """`Supervisor`, remembering whether it was started (and on which loop) and
    stopped. Built on first use, so that loading this plugin does not import the supervisor."""
    from supervisor.supervisor import Supervisor

    class FixtureSupervisor(Supervisor):
        def __init__(self, plugins_dir: Path, lifetime: _Lifetime, **options: Any) -> None:
            super().__init__(plugins_dir, **options)
            self._lifetime = lifetime

        async def start(self) -> None:
            # First: a start cancelled halfway counts too.
            self._lifetime.started = True
            self._lifetime.loop = asyncio.get_running_loop()
            await super().start()

        async def stop(self) -> None:
            self._lifetime.stopped = True
            await super().stop()

    return FixtureSupervisor


class _TestRun:
    """The supervisors and processes of one test."""

    def __init__(self, tmp_path: Path) -> None:
        import psutil

        self.id = uuid.uuid4().hex
        self.tmp_path = tmp_path
        self.lifetimes: list[_Lifetime] = []
        self.children_before = {_identity(child) for child in psutil.Process().children(recursive=True)}

    def supervisor(self, path: str | os.PathLike[str], /, *, runtime: dict[str, Any] | None = None, **options: Any) -> Supervisor:
        source = Path(path)
        if not source.is_dir():
            raise NotADirectoryError(f"neko_supervisor needs a plugins folder or a plugin folder, got {str(source)!r}")
        home = self.tmp_path / "neko_supervisor" / str(len(self.lifetimes) + 1)
        if (source / "plugin.toml").is_file():
            plugins_dir = home / "plugins"
            # A copy, not a symlink: the plugin writes beside its plugin.toml.
            copy = plugins_dir / source.resolve().name
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
            if runtime:
                _override_runtime(copy / "plugin.toml", runtime)
        elif runtime:
            raise ValueError("runtime= rewrites the copy of one plugin folder: give the plugin's folder, not a plugins folder")
        else:
            plugins_dir = source
        options.setdefault("log_dir", home / "logs")
        options["env_allow"] = (*options.get("env_allow", ()), RUN_VARIABLE)
        lifetime = _Lifetime(plugins_dir)
        lifetime.supervisor = _supervisor_class()(plugins_dir, lifetime, **options)
        self.lifetimes.append(lifetime)
        return lifetime.supervisor

    def check(self) -> None:
        """Fail the test, after cleaning up, if a supervisor was never stopped or a process is left behind."""
        problems = []
        stranded = False
        for lifetime in self.lifetimes:
            if lifetime.started and not lifetime.stopped:
                stopped_now = _stop_late(lifetime)
                stranded |= not stopped_now
                problems.append(
                    f"the supervisor on {lifetime.plugins_dir} was started but never stopped"
                    " (use it as `async with neko_supervisor(...) as sup:`); "
                    + ("the fixture stopped it on its event loop." if stopped_now else "its event loop is closed, so the fixture could not stop it.")
                )
        ours, others = self.left_behind()
        if ours:
            problems.append(f"{len(ours)} process(es) left behind by the test, killed now:" + "".join(f"\n  {_describe(proc)}" for proc in ours))
        if others:
            # Not started through this fixture (a longer-lived supervisor's new worker,
            # say): reported, never killed or reaped, since someone else owns them.
            problems.append(f"{len(others)} other new process(es) of this test are still alive or unreaped:" + "".join(f"\n  {_describe(proc)}" for proc in others))
        _kill(ours)
        for lifetime in self.lifetimes:
            lifetime.supervisor = lifetime.loop = None
        if stranded:
            _collect_quietly()
        if problems:
            pytest.fail("neko_supervisor: " + "\n".join(problems), pytrace=False)

    def left_behind(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """(processes of this test's supervisors, other new descendants of this process)."""
        import psutil

        from supervisor.process import TAG_VARIABLE

        me = psutil.Process()
        new_children = {child.pid: child for child in me.children(recursive=True) if _identity(child) not in self.children_before}
        direct = {child.pid for child in me.children()}
        ours: dict[int, psutil.Process] = {}
        others: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter():
            if proc.pid == me.pid:
                continue
            try:
                environ = proc.environ()
                zombie = proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                continue  # gone, or not ours to read
            if zombie or TAG_VARIABLE not in environ:
                continue
            if environ.get(RUN_VARIABLE) == self.id:
                ours[proc.pid] = proc
            elif proc.pid in new_children:
                others[proc.pid] = proc
        for pid, child in new_children.items():
            # A zombie's environment is gone: a new unreaped child is reported, not reaped.
            if pid in direct and pid not in ours and _status(child) == psutil.STATUS_ZOMBIE:
                others[pid] = child
        return sorted(ours.values(), key=lambda proc: proc.pid), sorted(others.values(), key=lambda proc: proc.pid)


def _override_runtime(manifest: Path, runtime: dict[str, Any]) -> None:
    """Set `[plugin_runtime]` keys in the copy's plugin.toml (a test's max_restarts, say).
    The supervisor parses the result as usual, so a bad value fails with its usual error."""
    from supervisor.manifest import RuntimeOptions

    unknown = sorted(set(runtime) - set(RuntimeOptions.__dataclass_fields__))
    if unknown:
        raise ValueError(f"runtime= has keys [plugin_runtime] does not know: {', '.join(unknown)}")
    lines = manifest.read_text(encoding="utf-8").splitlines()
    table = next((i for i, line in enumerate(lines) if line.strip() == "[plugin_runtime]"), None)
    if table is None:
        lines += ["", "[plugin_runtime]"]
        table = len(lines) - 1
    end = next((i for i in range(table + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    kept = [line for line in lines[table + 1 : end] if line.split("=", 1)[0].strip() not in runtime]
    lines[table + 1 : end] = [f"{key} = {_toml_value(value)}" for key, value in runtime.items()] + kept
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise TypeError(f"runtime= values must be bool, int, float or str, got {type(value).__name__}")


def _identity(proc: psutil.Process) -> tuple[int, float]:
    """A pid with its start time: a recycled pid is another process."""
    import psutil

    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return proc.pid, 0.0


def _status(proc: psutil.Process) -> str:
    import psutil

    try:
        return str(proc.status())
    except psutil.Error:
        return "gone"


def _describe(proc: psutil.Process) -> str:
    import psutil

    status = _status(proc)
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        command = ""  # a zombie has no command line any more
    if not command:
        try:
            command = f"[{proc.name()}]"
        except psutil.Error:
            command = "?"
    if len(command) > 160:
        command = command[:157] + "..."
    note = " (an unreaped child of the test process)" if status == psutil.STATUS_ZOMBIE else ""
    return f"pid {proc.pid} {status}{note}: {command}"


def _stop_late(lifetime: _Lifetime) -> bool:
    """Stop a supervisor the test forgot to stop, on the loop it was started on, if
    that loop is still open and idle: a module or session loop is; pytest-asyncio
    has closed a test's own loop by now, and `asyncio.run` closes its loop at once.
    True if it is stopped now."""
    loop, supervisor = lifetime.loop, lifetime.supervisor
    if loop is None or supervisor is None or loop.is_closed() or loop.is_running():
        return False
    try:
        loop.run_until_complete(supervisor.stop())
    except Exception:
        return False
    return True


def _collect_quietly() -> None:
    """Collect the workers' pipes and Popen objects of a supervisor that could not be
    stopped now, rather than let their ResourceWarnings fail a later test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _kill(procs: list[psutil.Process]) -> None:
    """SIGKILL, then wait for them to go; our own children are reaped on the way."""
    import psutil

    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=KILL_WAIT)
