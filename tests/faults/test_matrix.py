"""The fault matrix: each fault the chaos API injects, at each phase of a call's life,
for a sync and an async entry of the `echo` fault plugin.

    phase             faults
    handshake         fail_spawns (within / over the budget), a corrupted or dropped hello,
                      a slow handshake, one past plugin_runtime.timeout, a kill while starting
    call delivery     kill before delivery, the call frame dropped / corrupted / delayed
    entry running     a hang past the deadline, kill in the entry, freeze until the deadline,
                      kill now, a short freeze
    result encoding   the result frame corrupted
    result delivery   kill before the result, the result dropped, delayed within / past the grace
    shutdown          kill / freeze while stop_plugin runs with a call in flight

`MATRIX` is the table: one `Cell` per fault and phase, each run for both entry kinds.
Every cell asserts the caller's error (its exact type), the time it took, the injections
recorded in `status().injections`, the plugin's state afterwards (worker kept, replaced,
failed or stopped, with how its last worker ended), that the next calls succeed (after a
restart() / start_plugin() where the cell ends failed / stopped), and that no process
(the `no_leaks` fixture) or file descriptor is left behind.

Below the matrix: cancellation racing the queue, the call in flight and its completion,
and kills racing a restart and a shutdown; every call resolves exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor import (
    CallTimeout,
    ExitInfo,
    FakeClock,
    PluginChaos,
    PluginUnavailable,
    ProtocolError,
    Supervisor,
    WorkerCrashed,
)
from tests.conftest import FAULT_PLUGINS, copy_plugins, pid_alive
from tests.faults.helpers import set_runtime, supervising, wait_for

pytestmark = pytest.mark.usefixtures("no_leaks")

PLUGIN = "echo"
TIMEOUT = 0.5        # the call timeout in cells that time out
GRACE = 0.2          # Supervisor(cancel_grace=...): a timed-out call's worker is killed this much later
LATE = 0.5           # the README promises CallTimeout at most 0.25 s late; doubled for a shared machine
CRASH_BOUND = 2.0    # a crash reaches the caller "at once"; generous for a shared machine
SHUTDOWN = 0.5       # plugin_runtime.shutdown_timeout, unless a cell says otherwise
HANDSHAKE = 0.5      # plugin_runtime.timeout, in the cell whose handshake never completes
SIGTERM_GRACE = 2.0  # the handle's wait between SIGTERM and SIGKILL (supervisor.handle.SIGTERM_GRACE)
RUNTIME = {"max_restarts": 100, "restart_window": 60, "shutdown_timeout": SHUTDOWN}

# What each entry kind runs: (entry, arguments, the value it returns).
WORK: dict[str, dict[str, tuple[str, dict[str, Any], Any]]] = {
    "sync": {
        "quick": ("echo", {"value": 7}, 7),
        "short": ("sleep", {"seconds": 0.3}, 0.3),    # long enough to show it ran to its end
        "long": ("sleep", {"seconds": 30}, None),     # never ends within a cell
    },
    "async": {
        "quick": ("aecho", {"value": 7}, 7),
        "short": ("asleep", {"seconds": 0.3}, 0.3),
        "long": ("asleep", {"seconds": 30}, None),
    },
}


@dataclass(slots=True)
class Outcome:
    value: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0      # seconds, measured as the cell's scenario says
    entry: str = ""           # the entry of the call the fault struck


Scenario = Callable[[Supervisor, PluginChaos, str], Awaitable[Outcome]]


async def outcome_of(call: Awaitable[Any], started: float, entry: str) -> Outcome:
    try:
        value = await call
    except Exception as exc:
        return Outcome(error=exc, elapsed=time.monotonic() - started, entry=entry)
    return Outcome(value=value, elapsed=time.monotonic() - started, entry=entry)


# -- scenarios: where in a plugin's life the fault is injected ----------------------------
# Each returns the outcome of the one call the fault strikes.

def at_call(arm: Callable[[PluginChaos], None], work: str = "quick", timeout: float = TIMEOUT, *, disarm: bool = False) -> Scenario:
    """Arm the fault, then make one call on a running worker (the worker's call 1).
    `disarm`: clear the fault once the call has its answer (a delay would slow the restart)."""

    async def run(sup: Supervisor, chaos: PluginChaos, kind: str) -> Outcome:
        entry, args, _ = WORK[kind][work]
        arm(chaos)
        started = time.monotonic()
        outcome = await outcome_of(sup.call(PLUGIN, entry, args, timeout=timeout), started, entry)
        if disarm:
            chaos.clear()
        return outcome

    return run


def in_flight(strike: Callable[[PluginChaos], None], work: str = "long", timeout: float = TIMEOUT) -> Scenario:
    """Make one call, and strike once the supervisor has sent it."""

    async def run(sup: Supervisor, chaos: PluginChaos, kind: str) -> Outcome:
        entry, args, _ = WORK[kind][work]
        started = time.monotonic()
        call = asyncio.create_task(sup.call(PLUGIN, entry, args, timeout=timeout))
        await wait_for(lambda: sup.status(PLUGIN).in_flight == 1 or call.done())
        strike(chaos)
        return await outcome_of(call, started, entry)

    return run


def at_start(arm: Callable[[PluginChaos], None], strike: Callable[[Supervisor, PluginChaos], Awaitable[None]] | None = None) -> Scenario:
    """Arm the fault on a stopped plugin, start it, and call while it starts: the call
    waits for a worker within its own timeout. `strike` acts while the start runs."""

    async def run(sup: Supervisor, chaos: PluginChaos, kind: str) -> Outcome:
        entry, args, _ = WORK[kind]["quick"]
        arm(chaos)
        started = time.monotonic()
        starting = asyncio.create_task(sup.start_plugin(PLUGIN))
        await wait_for(lambda: sup.status(PLUGIN).state != "stopped" or starting.done())
        call = asyncio.create_task(sup.call(PLUGIN, entry, args, timeout=5))
        if strike is not None:
            await strike(sup, chaos)
        outcome = await outcome_of(call, started, entry)
        await starting  # returns once running or its first start failed; never raises here
        return outcome

    return run


def at_restart(arm: Callable[[PluginChaos], None]) -> Scenario:
    """Arm the fault, kill the running worker, and call once its death is seen: the call
    waits for the replacement."""

    async def run(sup: Supervisor, chaos: PluginChaos, kind: str) -> Outcome:
        entry, args, _ = WORK[kind]["quick"]
        arm(chaos)
        started = time.monotonic()
        chaos.kill()
        await wait_for(lambda: sup.status(PLUGIN).restarts >= 1)
        return await outcome_of(sup.call(PLUGIN, entry, args, timeout=5), started, entry)

    return run


def at_stop(
    before: Callable[[PluginChaos], None], during: Callable[[PluginChaos], None] | None = None,
    stop_started: Callable[[Supervisor], bool] | None = None,
) -> Scenario:
    """A long call in flight; `before(chaos)`; stop_plugin; once `stop_started` holds,
    `during(chaos)`. The outcome is the call's; its elapsed is the stop's duration."""

    async def run(sup: Supervisor, chaos: PluginChaos, kind: str) -> Outcome:
        entry, args, _ = WORK[kind]["long"]
        call = asyncio.create_task(sup.call(PLUGIN, entry, args, timeout=60))
        await wait_for(lambda: sup.status(PLUGIN).in_flight == 1)
        before(chaos)
        started = time.monotonic()
        stopping = asyncio.create_task(sup.stop_plugin(PLUGIN))
        if during is not None:
            assert stop_started is not None
            await wait_for(lambda: stop_started(sup))
            during(chaos)
        await stopping
        elapsed = time.monotonic() - started
        # The worker's death answered the call before stop() returned; the task needs a turn.
        outcome = await asyncio.wait_for(outcome_of(call, started, entry), 1.0)
        outcome.elapsed = elapsed
        return outcome

    return run


def shutdown_frame_dropped(sup: Supervisor) -> bool:
    """The stop sequence has begun: the shutdown frame went through (and was dropped by) chaos."""
    return any(i.kind == "drop" and i.detail.startswith("shutdown") for i in sup.status(PLUGIN).injections)


async def kill_once_starting(sup: Supervisor, chaos: PluginChaos) -> None:
    """Kill the worker while its handshake is held back, then let the next one through."""
    await wait_for(lambda: sup.status(PLUGIN).state == "starting" and sup.status(PLUGIN).pid is not None)
    chaos.kill()
    chaos.delay("from_worker", 0)


# -- the table ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Exit:
    """How the plugin's last worker ended (status().last_exit)."""

    signal: int | None = None
    code: int | None = None
    reason: str = ""

    def check(self, last_exit: ExitInfo | None) -> None:
        assert last_exit is not None
        if self.signal is not None:
            assert last_exit.signal == self.signal, last_exit
        if self.code is not None:
            assert last_exit.exit_code == self.code, last_exit
        assert self.reason in last_exit.reason, last_exit


KEPT, REPLACED, FAILED, STOPPED = "kept", "replaced", "failed", "stopped"
CALL = True  # an injection that names the call it struck (the worker's call 1)


@dataclass(frozen=True, slots=True)
class Cell:
    phase: str
    fault: str
    scenario: Scenario = field(repr=False)
    error: type[Exception] | None          # exactly this type; None: the call returns its value
    seconds: tuple[float, float]           # lower <= elapsed < upper (the call's; the stop's at shutdown)
    after: str                             # KEPT / REPLACED / FAILED / STOPPED
    injections: tuple[tuple[str, bool], ...]  # (kind, names the call), in order
    restarts: int = 0
    exit: Exit | None = None               # how the last worker ended
    log: str = ""                          # a line of the plugin's log holds this
    message: str = ""                      # str(error) holds this
    runtime: dict[str, Any] = field(default_factory=dict)
    auto_start: bool = True
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)  # fields that differ for one entry kind

    @property
    def id(self) -> str:
        return f"{self.phase}: {self.fault}"

    def for_kind(self, kind: str) -> Cell:
        return dataclasses.replace(self, **self.kinds.get(kind, {}))


KILLED_FOR_HANG = Exit(signal.SIGKILL, reason=f"did not stop within {GRACE:g} s of its timeout")
STOPPED_BY_KILL = Exit(signal.SIGKILL, reason="stopped")
TIMED_OUT = (TIMEOUT, TIMEOUT + LATE)

MATRIX = [
    # -- handshake: the call waits for a worker through failed starts, or sees the plugin fail
    Cell("handshake", "fail_spawns(1)", at_start(lambda c: c.fail_spawns(1)),
         None, (0, 3), REPLACED, (("fail_spawn", False),), restarts=1, auto_start=False,
         log="start failed: chaos: the worker failed to start"),
    Cell("handshake", "fail_spawns(3) over a budget of 2", at_start(lambda c: c.fail_spawns(3)),
         PluginUnavailable, (0, 3), FAILED, (("fail_spawn", False),) * 3, restarts=2, auto_start=False,
         runtime={"max_restarts": 2}, message="restart budget spent"),
    Cell("handshake", "corrupt_next(from_worker): the hello", at_start(lambda c: c.corrupt_next("from_worker")),
         None, (0, 3), REPLACED, (("corrupt", False),), restarts=1, auto_start=False,
         log="start failed: protocol error during handshake: chaos: a corrupted hello frame"),
    Cell("handshake", "corrupt_next(from_worker) at a restart", at_restart(lambda c: c.corrupt_next("from_worker")),
         None, (0, 3), REPLACED, (("kill", False), ("corrupt", False)), restarts=2,
         log="start failed: protocol error during handshake: chaos: a corrupted hello frame"),
    Cell("handshake", "drop_next(from_worker): the hello", at_start(lambda c: c.drop_next("from_worker")),
         None, (0, 3), REPLACED, (("drop", False),), restarts=1, auto_start=False,
         log="start failed: protocol error during handshake: unexpected ready message"),
    Cell("handshake", "delay(from_worker): a slow start", at_start(lambda c: c.delay("from_worker", 0.3)),
         None, (0.3, 0.3 + CRASH_BOUND), KEPT, (("delay", False),), auto_start=False),
    Cell("handshake", "delay(from_worker) past plugin_runtime.timeout, budget 1", at_start(lambda c: c.delay("from_worker", 30)),
         PluginUnavailable, (2 * HANDSHAKE, 2 * HANDSHAKE + CRASH_BOUND), FAILED, (("delay", False),), restarts=1, auto_start=False,
         runtime={"timeout": HANDSHAKE, "max_restarts": 1}, message=f"did not become ready within {HANDSHAKE:g} s"),
    Cell("handshake", "kill() while starting", at_start(lambda c: c.delay("from_worker", 30), kill_once_starting),
         None, (0, 3), REPLACED, (("delay", False), ("kill", False), ("delay", False)), restarts=1, auto_start=False,
         log="start failed: the worker died during start-up"),
    # -- call delivery
    Cell("call delivery", "kill_next_call(before_delivery)", at_call(lambda c: c.kill_next_call("before_delivery")),
         WorkerCrashed, (0, CRASH_BOUND), REPLACED, (("kill_before_delivery", CALL),), restarts=1,
         exit=Exit(signal.SIGKILL, reason="chaos: killed before the call reached the plugin")),
    Cell("call delivery", "drop_next(to_worker)", at_call(lambda c: c.drop_next("to_worker")),
         CallTimeout, TIMED_OUT, REPLACED, (("drop", CALL),), restarts=1, exit=KILLED_FOR_HANG),
    Cell("call delivery", "corrupt_next(to_worker)", at_call(lambda c: c.corrupt_next("to_worker")),
         WorkerCrashed, (0, CRASH_BOUND), REPLACED, (("corrupt", CALL),), restarts=1,
         exit=Exit(code=6, reason="the worker could not decode what the supervisor sent")),
    Cell("call delivery", "delay(to_worker) within the timeout", at_call(lambda c: c.delay("to_worker", 0.2), timeout=5),
         None, (0.2, 0.2 + CRASH_BOUND), KEPT, (("delay", False),)),
    # -- entry running
    # The baseline hang, no injection: an async entry is cancelled in the worker, which
    # is kept; a sync one cannot be, and its worker is killed after the grace.
    Cell("entry running", "hang (no injection): the deadline passes", at_call(lambda c: None, "long"),
         CallTimeout, TIMED_OUT, KEPT, (),
         kinds={"sync": {"after": REPLACED, "restarts": 1, "exit": KILLED_FOR_HANG}}),
    Cell("entry running", "kill_next_call(in_entry)", at_call(lambda c: c.kill_next_call("in_entry"), "long", timeout=10),
         WorkerCrashed, (0, CRASH_BOUND), REPLACED, (("kill_in_entry", CALL),), restarts=1,
         exit=Exit(signal.SIGKILL, reason="chaos: killed while the entry ran")),
    Cell("entry running", "freeze() until the deadline", in_flight(lambda c: c.freeze()),
         CallTimeout, TIMED_OUT, REPLACED, (("freeze", False),), restarts=1, exit=KILLED_FOR_HANG),
    Cell("entry running", "kill() now", in_flight(lambda c: c.kill(), timeout=10),
         WorkerCrashed, (0, CRASH_BOUND), REPLACED, (("kill", False),), restarts=1,
         exit=Exit(signal.SIGKILL, reason="chaos: killed")),
    Cell("entry running", "freeze(0.3) within the timeout", in_flight(lambda c: c.freeze(0.3), "short", timeout=5),
         None, (0.3, 0.3 + CRASH_BOUND), KEPT, (("freeze", False),)),
    # -- result encoding: the frame that carries the result is garbage
    Cell("result encoding", "corrupt_next(from_worker)", at_call(lambda c: c.corrupt_next("from_worker")),
         ProtocolError, (0, CRASH_BOUND), REPLACED, (("corrupt", CALL),), restarts=1,
         exit=Exit(signal.SIGKILL, reason="protocol error: chaos: a corrupted result frame")),
    # -- result delivery
    Cell("result delivery", "kill_next_call(before_result)", at_call(lambda c: c.kill_next_call("before_result"), "short", timeout=10),
         WorkerCrashed, (0.3, 0.3 + CRASH_BOUND), REPLACED, (("kill_before_result", CALL),), restarts=1,
         exit=Exit(signal.SIGKILL, reason="chaos: killed after the entry returned")),
    Cell("result delivery", "drop_next(from_worker)", at_call(lambda c: c.drop_next("from_worker")),
         CallTimeout, TIMED_OUT, REPLACED, (("drop", CALL),), restarts=1, exit=KILLED_FOR_HANG),
    # The late answer lands within the cancel grace: a late answer, the worker is kept.
    # (The next call runs under the same delay, past the moment the worker would have been killed.)
    Cell("result delivery", "delay(from_worker) past the timeout, within the grace",
         at_call(lambda c: c.delay("from_worker", TIMEOUT + GRACE / 2)),
         CallTimeout, TIMED_OUT, KEPT, (("delay", False),)),
    # The answer is still held when the grace ends: the worker is killed as a hang.
    Cell("result delivery", "delay(from_worker) past the timeout and the grace",
         at_call(lambda c: c.delay("from_worker", TIMEOUT + GRACE + 0.3), disarm=True),
         CallTimeout, TIMED_OUT, REPLACED, (("delay", False),), restarts=1, exit=KILLED_FOR_HANG),
    # -- shutdown: a call in flight while stop_plugin runs. We were stopping the worker, so
    # its death is "we stopped it" (PluginUnavailable), however it ends.
    Cell("shutdown", "kill() during stop_plugin", at_stop(lambda c: c.drop_next("to_worker"), lambda c: c.kill(), shutdown_frame_dropped),
         PluginUnavailable, (0, 1.5), STOPPED, (("drop", False), ("kill", False)), exit=STOPPED_BY_KILL,
         runtime={"shutdown_timeout": 3}, message="stopped while the call was in flight"),
    # A worker frozen by a test is thawed when its stop begins: the stop stays graceful.
    Cell("shutdown", "freeze() before stop_plugin", at_stop(lambda c: c.freeze()),
         PluginUnavailable, (0, SHUTDOWN + 1.0), STOPPED, (("freeze", False),),
         exit=Exit(code=0, reason="stopped"), message="stopped while the call was in flight",
         kinds={"async": {"message": "was cancelled: the worker is shutting down"}}),  # async calls are cancelled by the stop
    # Frozen once the stop has begun (its shutdown frame lost): SIGTERM waits in vain, then SIGKILL.
    Cell("shutdown", "freeze() during stop_plugin", at_stop(lambda c: c.drop_next("to_worker"), lambda c: c.freeze(), shutdown_frame_dropped),
         PluginUnavailable, (SHUTDOWN + SIGTERM_GRACE, SHUTDOWN + SIGTERM_GRACE + 1.5), STOPPED, (("drop", False), ("freeze", False)),
         exit=STOPPED_BY_KILL, message="stopped while the call was in flight",
         log=f"ignored SIGTERM for {SIGTERM_GRACE:g} s; sending SIGKILL"),
]


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points at."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
    return found


async def no_new_fds(before: dict[int, str]) -> None:
    """No descriptor opened since `before` stays open. Waits a moment under a deadline: a
    thread the stop cancelled but could not interrupt (the resource watcher's last look at
    /proc) may hold one for a few milliseconds more."""

    def new() -> dict[int, str]:
        return {fd: target for fd, target in open_fds().items() if before.get(fd) != target}

    try:
        await wait_for(lambda: not new(), timeout=2)
    except AssertionError:
        raise AssertionError(f"file descriptors left open: {new()}") from None


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("cell", MATRIX, ids=lambda cell: cell.id)
async def test_fault_matrix(tmp_path: Path, cell: Cell, kind: str) -> None:
    cell = cell.for_kind(kind)
    runtime = {PLUGIN: {**RUNTIME, **cell.runtime}}
    fds = open_fds()
    pids: set[int] = set()
    async with supervising(tmp_path, [PLUGIN], runtime, cancel_grace=GRACE, clock=FakeClock(), auto_start=cell.auto_start) as sup:
        chaos = sup.chaos(PLUGIN)
        first_pid = sup.status(PLUGIN).pid
        outcome = await cell.scenario(sup, chaos, kind)

        # The error the caller sees, exactly; or the entry's value.
        if cell.error is None:
            assert outcome.error is None, repr(outcome.error)
            assert outcome.value == next(value for entry, _, value in WORK[kind].values() if entry == outcome.entry)
        else:
            assert type(outcome.error) is cell.error, repr(outcome.error)
            assert cell.message in str(outcome.error)
        # The time it took.
        low, high = cell.seconds
        assert low <= outcome.elapsed < high, f"{outcome.elapsed:.3f} s not in [{low}, {high})"
        status = sup.status(PLUGIN)
        if cell.error in (WorkerCrashed, ProtocolError) and cell.after == REPLACED:
            # The status is current by the time the caller hears of the death.
            assert status.state in ("starting", "running") and status.restarts == cell.restarts
            assert cell.exit is not None
            cell.exit.check(status.last_exit)
            if isinstance(outcome.error, WorkerCrashed):
                assert outcome.error.exit == status.last_exit
        # The call resolved once, and was counted so: successes are calls less failures.
        assert status.calls - status.failures == (1 if cell.error is None else 0)
        # The injections, in order, naming the call where the fault struck one.
        recorded = [(i.kind, i.call_id) for i in status.injections]
        assert recorded == [(kind_, 1 if names_call else None) for kind_, names_call in cell.injections]
        for injection in status.injections:
            if injection.kind.startswith("kill_"):
                assert injection.entry_id == outcome.entry

        # The plugin afterwards.
        pids.update(p for p in (first_pid, status.pid) if p is not None)
        await check_after(sup, cell, first_pid)
        if cell.log:
            assert any(cell.log in line for line in sup.logs(PLUGIN)), sup.logs(PLUGIN, tail=20)
        chaos.clear()  # disarms what is left, delays included
        # The next calls succeed, on both entry kinds; nothing is left in flight.
        assert await sup.call(PLUGIN, "echo", {"value": "next"}, timeout=10) == "next"
        assert await sup.call(PLUGIN, "aecho", {"value": "next"}, timeout=10) == "next"
        status = sup.status(PLUGIN)
        assert (status.in_flight, status.queued) == (0, 0)
        pids.update(p for p in (status.pid,) if p is not None)
    # Nothing is left behind: every worker is gone (and reaped: no_leaks), every fd closed.
    assert not [pid for pid in pids if pid_alive(pid)]
    await no_new_fds(fds)


async def check_after(sup: Supervisor, cell: Cell, first_pid: int | None) -> None:
    """The state the cell leaves the plugin in; then bring it back if it ends failed / stopped."""
    if cell.after == KEPT:
        status = sup.status(PLUGIN)
        assert (status.state, status.restarts) == ("running", 0)
        assert first_pid is None or status.pid == first_pid  # None: the cell started the plugin
        # Still under the cell's fault (a delay, say) the worker answers, and outlives any
        # kill a timeout could have scheduled.
        entry, args, value = WORK["async"]["quick"]
        assert await sup.call(PLUGIN, entry, args, timeout=10) == value
        assert (sup.status(PLUGIN).pid, sup.status(PLUGIN).restarts) == (status.pid, 0)
    elif cell.after == REPLACED:
        await wait_for(lambda: sup.status(PLUGIN).state == "running" and sup.status(PLUGIN).restarts >= cell.restarts)
        status = sup.status(PLUGIN)
        assert status.restarts == cell.restarts
        assert status.pid is not None and status.pid != first_pid
        if first_pid is not None:
            assert not pid_alive(first_pid)
        if cell.exit is not None:
            cell.exit.check(status.last_exit)
    elif cell.after == FAILED:
        await sup.wait_for_state(PLUGIN, "failed", timeout=5)
        assert sup.status(PLUGIN).restarts == cell.restarts
        started = time.monotonic()
        with pytest.raises(PluginUnavailable, match="failed"):
            await sup.call(PLUGIN, "echo", {"value": 1}, timeout=5)
        assert time.monotonic() - started < 0.5, "a failed plugin refuses at once"
        sup.chaos(PLUGIN).clear()
        await sup.restart(PLUGIN)  # an operator's decision: try again
    elif cell.after == STOPPED:
        assert sup.status(PLUGIN).state == "stopped"
        assert sup.status(PLUGIN).pid is None
        if cell.exit is not None:
            cell.exit.check(sup.status(PLUGIN).last_exit)
        with pytest.raises(PluginUnavailable, match="stopped"):
            await sup.call(PLUGIN, "echo", {"value": 1}, timeout=5)
        await sup.start_plugin(PLUGIN)
    else:
        raise AssertionError(f"unknown state {cell.after!r}")


# -- races: every call resolves exactly once ------------------------------------------------

class LoopErrors:
    """Collects what the event loop's exception handler would only log: a callback that
    raised (a future resolved twice raises InvalidStateError there), a task whose
    exception nobody retrieved."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __enter__(self) -> LoopErrors:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(lambda _loop, context: self.seen.append(str(context.get("exception") or context["message"])))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.set_exception_handler(self._previous)


async def turns(count: int) -> None:
    """Let the loop run `count` times: a seeded jitter that moves a race's interleaving."""
    for _ in range(count):
        await asyncio.sleep(0)


async def settle(tasks: list[asyncio.Task[Any]], timeout: float) -> list[Any]:
    """Every task's single outcome (a value, an exception, or CancelledError), under a deadline:
    a call that never resolves fails the test here instead of hanging it."""
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    assert not pending, f"{len(pending)} calls never resolved"
    return [asyncio.CancelledError() if t.cancelled() else t.exception() or t.result() for t in tasks]


def try_kill(chaos: PluginChaos) -> bool:
    """chaos.kill(); False when no worker runs to be killed (between two workers, after a stop)."""
    try:
        chaos.kill()
    except RuntimeError as exc:
        if "no running worker to kill" not in str(exc):
            raise
        return False
    return True


def accounted(sup: Supervisor, successes: int) -> None:
    """Each call was counted once, as a success or a failure: nothing resolved twice or not at all."""
    status = sup.status(PLUGIN)
    assert status.calls - status.failures == successes
    assert (status.in_flight, status.queued) == (0, 0)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_cancellation_races_resolve_each_call_exactly_once(tmp_path: Path, kind: str) -> None:
    """Cancel while queued, while in flight, racing the answer, and let the deadline race the
    answer, many times with seeded jitter. A call ends with its value or with CancelledError
    (CallTimeout for the deadline), never both, never hangs; no worker is killed (a cancelled
    call that ends within the grace is a late answer, not a hang) and none breaks the protocol."""
    rng = random.Random(f"cancel-{kind}")
    quick, _, _ = WORK[kind]["quick"]
    slow = WORK[kind]["short"][0]
    runtime = {PLUGIN: {**RUNTIME, "max_concurrency": 1}}
    successes = 0
    modes: dict[str, int] = {}
    with LoopErrors() as loop_errors:
        async with supervising(tmp_path, [PLUGIN], runtime, cancel_grace=2.0, clock=FakeClock()) as sup:
            pid = sup.status(PLUGIN).pid
            for round_ in range(60):
                mode = rng.choice(["queued", "in_flight", "completion", "deadline"])
                modes[mode] = modes.get(mode, 0) + 1
                if mode == "queued":
                    # An async blocker holds the only place; the victim waits in the supervisor's queue.
                    blocker = asyncio.create_task(sup.call(PLUGIN, "asleep", {"seconds": 30}, timeout=20))
                    await wait_for(lambda: sup.status(PLUGIN).in_flight == 1)
                    victim = asyncio.create_task(sup.call(PLUGIN, quick, {"value": round_}, timeout=20))
                    await wait_for(lambda: sup.status(PLUGIN).queued == 1)
                    await turns(rng.randrange(5))
                    first, second = rng.sample([victim, blocker], 2)
                    first.cancel()
                    await turns(rng.randrange(5))
                    second.cancel()
                    victim_outcome, blocker_outcome = await settle([victim, blocker], 10)
                    assert isinstance(blocker_outcome, asyncio.CancelledError), blocker_outcome
                    if first is victim:  # cancelled in the queue: never sent, never answered
                        assert isinstance(victim_outcome, asyncio.CancelledError), victim_outcome
                    else:  # the blocker's cancel let it through: cancelled in flight, or answered
                        assert isinstance(victim_outcome, asyncio.CancelledError) or victim_outcome == round_, victim_outcome
                        successes += victim_outcome == round_
                elif mode == "in_flight":
                    victim = asyncio.create_task(sup.call(PLUGIN, slow, {"seconds": 0.05}, timeout=20))
                    await wait_for(lambda: sup.status(PLUGIN).in_flight == 1 or victim.done())  # noqa: B023 - read at once
                    await turns(rng.randrange(20))
                    victim.cancel()
                    (outcome,) = await settle([victim], 10)
                    assert isinstance(outcome, asyncio.CancelledError) or outcome == 0.05, outcome
                    successes += outcome == 0.05
                elif mode == "completion":
                    victim = asyncio.create_task(sup.call(PLUGIN, quick, {"value": round_}, timeout=20))
                    await turns(rng.randrange(60))
                    victim.cancel()
                    (outcome,) = await settle([victim], 10)
                    assert isinstance(outcome, asyncio.CancelledError) or outcome == round_, outcome
                    successes += outcome == round_
                else:
                    seconds = 0.03
                    victim = asyncio.create_task(sup.call(PLUGIN, slow, {"seconds": seconds}, timeout=seconds + rng.uniform(-0.01, 0.02)))
                    (outcome,) = await settle([victim], 10)
                    assert type(outcome) is CallTimeout or outcome == seconds, outcome
                    successes += outcome == seconds
                # The worker answers after every round: nothing it was sent is stuck in it.
                assert await sup.call(PLUGIN, "echo", {"value": "after"}, timeout=10) == "after"
                successes += 1
            accounted(sup, successes)
            status = sup.status(PLUGIN)
            assert (status.state, status.pid, status.restarts) == ("running", pid, 0)
            assert not [line for line in sup.logs(PLUGIN) if "protocol error" in line or "killing worker" in line]
    assert loop_errors.seen == []
    assert set(modes) == {"queued", "in_flight", "completion", "deadline"}, modes


ROUNDS = 20


async def test_kills_racing_restarts_resolve_each_call_exactly_once(tmp_path: Path) -> None:
    """chaos.kill() again and again while the plugin restarts: the running worker, the one
    starting (its handshake fails), or none (between two workers: a clear RuntimeError).
    Calls in flight get WorkerCrashed, exactly once; calls made meanwhile wait for a worker
    and succeed or, sent to one killed under them, get WorkerCrashed. Nothing is re-sent."""
    rng = random.Random("kills")
    successes = kills = starting = 0
    with LoopErrors() as loop_errors:
        async with supervising(tmp_path, [PLUGIN], {PLUGIN: {**RUNTIME, "max_restarts": 1000}}, cancel_grace=GRACE, clock=FakeClock()) as sup:
            chaos = sup.chaos(PLUGIN)
            for _ in range(ROUNDS):
                await sup.wait_for_state(PLUGIN, "running", timeout=10)
                long_calls = [asyncio.create_task(sup.call(PLUGIN, entry, {"seconds": 30}, timeout=20)) for entry in ("sleep", "asleep")]
                ended: list[float] = []
                for call in long_calls:
                    call.add_done_callback(lambda _: ended.append(time.monotonic()))  # noqa: B023 - this round's list
                await wait_for(lambda: sup.status(PLUGIN).in_flight >= 2)
                first_kill: float | None = None
                quick_calls = [asyncio.create_task(sup.call(PLUGIN, entry, {"value": n}, timeout=20)) for n, entry in enumerate(("echo", "aecho"))]
                killed: set[int | None] = {None}
                restarts = sup.status(PLUGIN).restarts
                for strike in range(rng.randint(1, 4)):
                    aim = rng.choice(["turns", "replacement", "new worker"]) if strike else "now"
                    if aim == "turns":  # most often the same worker, still dying
                        await turns(rng.randrange(30))
                    elif aim == "replacement":  # the death is seen: between two workers, or the one starting
                        await wait_for(lambda: sup.status(PLUGIN).restarts > restarts)  # noqa: B023 - read at once
                        await turns(rng.randrange(10))
                    elif aim == "new worker":  # a worker not yet struck: starting (its handshake fails) or ready
                        await wait_for(lambda: sup.status(PLUGIN).pid not in killed)  # noqa: B023 - read at once
                    status = sup.status(PLUGIN)
                    if try_kill(chaos):
                        first_kill = first_kill or time.monotonic()
                        kills += 1
                        killed.add(status.pid)
                        restarts = status.restarts
                        starting += status.state == "starting"
                    quick_calls.append(asyncio.create_task(sup.call(PLUGIN, "aecho", {"value": strike}, timeout=20)))
                outcomes = await settle(long_calls + quick_calls, 15)
                assert all(type(o) is WorkerCrashed for o in outcomes[:2]), outcomes[:2]  # never answered, never re-sent
                assert first_kill is not None and max(ended) - first_kill < CRASH_BOUND  # at once
                assert all(type(o) is WorkerCrashed or isinstance(o, int) for o in outcomes[2:]), outcomes[2:]
                successes += sum(isinstance(o, int) for o in outcomes[2:])
            await sup.wait_for_state(PLUGIN, "running", timeout=10)
            assert await sup.call(PLUGIN, "echo", {"value": "after"}, timeout=10) == "after"
            successes += 1
            accounted(sup, successes)
            status = sup.status(PLUGIN)
            # One record per death: a kill of a worker that is already dying adds none.
            recorded = [i.kind for i in status.injections]
            assert set(recorded) == {"kill"} and ROUNDS <= len(recorded) <= kills
            assert status.restarts >= ROUNDS  # at least one death a round, each followed by a new worker
    assert loop_errors.seen == []
    assert kills >= ROUNDS and starting >= 1, "the kills reached both running and starting workers"


@pytest.mark.parametrize(
    ("when", "seed"),
    # Two seeds where a seeded jitter picks the moment; one where the moment is fixed.
    [("before, seen", 0), ("before", 0), ("before", 1), ("first", 0), ("turns", 0), ("turns", 1), ("later", 0), ("later", 1)],
)
async def test_stop_racing_kill_resolves_each_call_exactly_once(tmp_path: Path, when: str, seed: int) -> None:
    """sup.stop() races chaos.kill() with calls in flight. The kill lands before the stop
    (WorkerCrashed; a restart may begin and is stopped), during it (PluginUnavailable: we
    were stopping it), or after the worker is gone (RuntimeError). Every call resolves once,
    the stop ends within shutdown_timeout + the SIGTERM grace, and no worker outlives it."""
    rng = random.Random(f"{when}-{seed}")
    root = copy_plugins(FAULT_PLUGINS, tmp_path / "faults", [PLUGIN])
    set_runtime(root / PLUGIN, **RUNTIME)
    with LoopErrors() as loop_errors:
        sup = Supervisor(root, log_dir=tmp_path / "logs", cancel_grace=GRACE, clock=FakeClock())
        await sup.start()
        try:
            chaos = sup.chaos(PLUGIN)
            pid = sup.status(PLUGIN).pid
            calls = [asyncio.create_task(sup.call(PLUGIN, entry, {"seconds": 30}, timeout=20)) for entry in ("sleep", "asleep")]
            await wait_for(lambda: sup.status(PLUGIN).in_flight == 2)
            calls += [asyncio.create_task(sup.call(PLUGIN, entry, {"value": 1}, timeout=20)) for entry in ("echo", "aecho")]
            if when == "before, seen":  # the death is seen first: a crash; the stop meets the replacement
                chaos.kill()
                await wait_for(lambda: sup.status(PLUGIN).restarts == 1)
            elif when == "before":  # killed, and the death may be seen before or after the stop begins
                chaos.kill()
                await turns(rng.randrange(40))
            started = time.monotonic()
            stopping = asyncio.create_task(sup.stop())
            if when == "turns":
                await turns(rng.randrange(40))
            elif when == "later":  # anywhere in the stop, up to after its end
                await asyncio.wait([stopping], timeout=rng.uniform(0, 0.5))
            try_kill(chaos)  # False: the worker is gone already, or between two workers
            await asyncio.wait_for(stopping, SHUTDOWN + SIGTERM_GRACE + 2)
            # Never as far as SIGTERM: the worker either ends its calls and exits, or is killed.
            assert time.monotonic() - started < SHUTDOWN + 1.5
            outcomes = await settle(calls, 2)
            # Which one depends on whether the death was seen before the stop began: a kill
            # still in progress then (the tree stopped, its SIGKILL not yet sent) counts as the stop's.
            allowed = (WorkerCrashed,) if when == "before, seen" else (WorkerCrashed, PluginUnavailable)
            assert all(type(o) in allowed for o in outcomes[:2]), outcomes[:2]
            assert all(type(o) in allowed or o == 1 for o in outcomes[2:]), outcomes[2:]
            accounted(sup, sum(o == 1 for o in outcomes[2:]))
            status = sup.status(PLUGIN)
            assert (status.state, status.pid) == ("stopped", None)
            with pytest.raises(RuntimeError, match="no running worker"):
                chaos.kill()
            with pytest.raises(PluginUnavailable):
                await sup.call(PLUGIN, "echo", {"value": 1}, timeout=1)
        finally:
            await sup.stop()
    assert pid is not None and not pid_alive(pid)
    assert loop_errors.seen == []
