"""The chaos API itself: each injection lands where it says, on real workers, and is recorded.

The fault matrix (test_matrix.py) crosses faults with phases and entry kinds;
this file checks the API's promises one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import (
    CallTimeout,
    FakeClock,
    InvalidArguments,
    PluginChaos,
    ProtocolError,
    Supervisor,
    WorkerCrashed,
)
from tests.conftest import PLUGINS, copy_plugins
from tests.faults.helpers import set_runtime, supervising, wait_for

pytestmark = pytest.mark.usefixtures("no_leaks")

ECHO = {"echo": {"max_restarts": 100}}


def kinds(sup: Supervisor, plugin_id: str) -> list[str]:
    return [injection.kind for injection in sup.status(plugin_id).injections]


# -- kill at a phase of the next call ------------------------------------------------

@contextlib.asynccontextmanager
async def persistent(tmp_path: Path) -> Any:
    root = copy_plugins(PLUGINS, tmp_path / "plugins", ["persistent"])
    set_runtime(root / "persistent", max_restarts=100)
    async with Supervisor(root, log_dir=tmp_path / "logs") as sup:
        yield sup


def saved_keys(tmp_path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(tmp_path / "plugins" / "persistent" / "data.db")) as conn:
        return {row[0] for row in conn.execute("SELECT key FROM records")}


@pytest.mark.parametrize(("phase", "saved"), [("before_delivery", False), ("before_result", True)])
async def test_kill_before_delivery_never_runs_the_entry_and_before_result_runs_it_fully(
    tmp_path: Path, phase: str, saved: bool
) -> None:
    async with persistent(tmp_path) as sup:
        sup.chaos("persistent").kill_next_call(phase)
        with pytest.raises(WorkerCrashed, match="chaos: killed"):
            await sup.call("persistent", "save", {"key": "k", "value": "v"})
        await sup.wait_for_state("persistent", "running")
        assert await sup.call("persistent", "save", {"key": "after", "value": "v"}) == {"saved": True}
        (injection,) = sup.status("persistent").injections
        assert (injection.kind, injection.entry_id, injection.call_id) == (f"kill_{phase}", "save", 1)
    # At most once, both ways: WorkerCrashed means "may have run", and here is each case.
    assert ("k" in saved_keys(tmp_path)) is saved


@pytest.mark.parametrize("entry", ["sleep", "asleep"])
async def test_kill_in_entry_strikes_while_the_entry_runs(tmp_path: Path, entry: str) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        sup.chaos("echo").kill_next_call("in_entry")
        started = time.monotonic()
        with pytest.raises(WorkerCrashed, match="chaos: killed while the entry ran"):
            await sup.call("echo", entry, {"seconds": 10})
        assert time.monotonic() - started < 2, "killed inside the 10 s entry, not after it"
        await sup.wait_for_state("echo", "running")
        assert await sup.call("echo", "echo", {"value": 1}) == 1


async def test_kill_next_call_can_target_one_entry_and_arms_calls_in_order(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        chaos = sup.chaos("echo")
        chaos.kill_next_call("before_delivery", entry="aecho")
        chaos.kill_next_call("before_delivery", entry="aecho")
        assert await sup.call("echo", "echo", {"value": 1}) == 1  # not the targeted entry
        for _ in range(2):
            with pytest.raises(WorkerCrashed):
                await sup.call("echo", "aecho", {"value": 1})
            await sup.wait_for_state("echo", "running")
        assert await sup.call("echo", "aecho", {"value": 2}) == 2  # both used up
        assert not chaos.armed


# -- now: kill, freeze, thaw ------------------------------------------------------------

async def test_kill_now_and_with_no_worker_a_clear_error(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        chaos = sup.chaos("echo")
        pid = sup.status("echo").pid
        chaos.kill()
        await wait_for(lambda: sup.status("echo").restarts == 1 and sup.status("echo").state == "running")
        assert sup.status("echo").pid != pid
        await sup.stop_plugin("echo")
        with pytest.raises(RuntimeError, match="no running worker to kill"):
            chaos.kill()
        assert kinds(sup, "echo") == ["kill"]


@pytest.mark.parametrize("entry", ["echo", "aecho"])
async def test_a_frozen_worker_answers_after_the_thaw(tmp_path: Path, entry: str) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        chaos = sup.chaos("echo")
        pid = sup.status("echo").pid
        assert pid is not None
        chaos.freeze()
        await wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)  # SIGSTOP lands asynchronously
        call = asyncio.create_task(sup.call("echo", entry, {"value": 7}))
        done, _ = await asyncio.wait([call], timeout=0.3)
        assert not done, "a frozen worker cannot answer"
        chaos.thaw()
        assert await call == 7
        started = time.monotonic()
        chaos.freeze(0.3)
        assert await sup.call("echo", entry, {"value": 8}) == 8
        assert time.monotonic() - started >= 0.3
        assert kinds(sup, "echo") == ["freeze", "thaw", "freeze"]


async def test_a_frozen_worker_times_out_and_is_killed_and_replaced(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], ECHO, cancel_grace=0.2) as sup:
        sup.chaos("echo").freeze()
        with pytest.raises(CallTimeout):
            await sup.call("echo", "echo", {"value": 1}, timeout=0.3)
        # Killed after the grace, then restarted.
        await wait_for(lambda: sup.status("echo").restarts == 1 and sup.status("echo").state == "running")
        assert await sup.call("echo", "echo", {"value": 2}) == 2


# -- frames ------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["to_worker", "from_worker"])
async def test_delays_hold_frames_and_keep_their_order(tmp_path: Path, direction: str) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        chaos = sup.chaos("echo")
        chaos.delay(direction, 0.2, jitter=0.1)
        started = time.monotonic()
        answered: list[int] = []

        async def call(n: int) -> None:
            answered.append(await sup.call("echo", "aecho", {"value": n}))

        async with asyncio.TaskGroup() as group:
            for n in range(20):
                group.create_task(call(n))  # sent in this order; each answer lands in arrival order
        assert answered == list(range(20)), "frames overtook each other"
        assert time.monotonic() - started >= 0.2
        chaos.delay(direction, 0)
        assert kinds(sup, "echo") == ["delay", "delay"]
        assert sup.status("echo").restarts == 0


@pytest.mark.parametrize(("direction", "fault", "error"), [
    ("to_worker", "drop", CallTimeout),
    ("from_worker", "drop", CallTimeout),
    ("to_worker", "corrupt", WorkerCrashed),     # the worker cannot decode it and exits 6
    ("from_worker", "corrupt", ProtocolError),   # garbage from the worker is a protocol violation
])
async def test_dropped_and_corrupted_frames(tmp_path: Path, direction: str, fault: str, error: type[Exception]) -> None:
    async with supervising(tmp_path, ["echo"], ECHO, cancel_grace=0.2) as sup:
        chaos = sup.chaos("echo")
        getattr(chaos, f"{fault}_next")(direction)
        with pytest.raises(error):
            await sup.call("echo", "echo", {"value": 1}, timeout=0.5)
        # Each ends this worker: the drops once the cancel finds nothing to stop within the grace.
        await wait_for(lambda: sup.status("echo").restarts == 1 and sup.status("echo").state == "running")
        assert await sup.call("echo", "echo", {"value": 2}) == 2
        (injection,) = sup.status("echo").injections
        assert injection.kind == fault and direction.replace("_", " ").split()[-1] in injection.detail


# -- starts ------------------------------------------------------------------------------

async def test_failed_spawns_go_through_backoff_and_the_budget_on_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    runtime = {"echo": {"max_restarts": 3, "restart_window": 60}}
    async with supervising(tmp_path, ["echo"], runtime, clock=clock) as sup:
        chaos = sup.chaos("echo")
        chaos.fail_spawns(2)
        await sup.restart("echo")  # returns after the first (failed) start
        await sup.wait_for_state("echo", "running")  # two failed starts, then a good one
        assert kinds(sup, "echo") == ["fail_spawn", "fail_spawn"]
        assert clock() > 0, "the backoff slept on the fake clock"
        chaos.fail_spawns(10)
        await sup.restart("echo")
        await sup.wait_for_state("echo", "failed")
        assert "restart budget spent" in (sup.status("echo").error or "")
        chaos.clear()
        await sup.restart("echo")
        assert await sup.call("echo", "echo", {"value": 1}) == 1


# -- arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "args"), [
    ("delay", ("to_worker", -1)),
    ("delay", ("from_worker", float("nan"))),
    ("delay", ("sideways", 1)),
    ("drop_next", ("to_worker", 0)),
    ("corrupt_next", ("from_worker", True)),
    ("fail_spawns", (-2,)),
    ("kill_next_call", ("during_lunch",)),
    ("freeze", (-1,)),
])
def test_bad_arguments_are_refused_with_a_clear_error(method: str, args: tuple[Any, ...]) -> None:
    chaos = PluginChaos("demo")
    with pytest.raises(ValueError, match=r"must be|is not a valid (Direction|Phase)"):
        getattr(chaos, method)(*args)
    assert not chaos.armed and chaos.injections == ()


# -- found by the fault matrix ---------------------------------------------------------------

async def test_a_freeze_until_thawed_is_not_ended_by_an_earlier_timed_freeze(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        chaos = sup.chaos("echo")
        chaos.freeze(0.2)
        chaos.thaw()
        chaos.freeze()  # until thaw()
        call = asyncio.create_task(sup.call("echo", "echo", {"value": 1}))
        done, _ = await asyncio.wait([call], timeout=0.5)
        assert not done, "the first freeze's timer thawed the second"
        chaos.thaw()
        assert await call == 1


async def test_kill_in_entry_waits_for_a_call_whose_entry_runs(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        chaos = sup.chaos("echo")
        chaos.kill_next_call("in_entry")
        with pytest.raises(InvalidArguments):
            await sup.call("echo", "sleep", {"wrong": 1})  # the entry never runs: the fault waits
        assert chaos.armed and sup.status("echo").injections == ()
        with pytest.raises(WorkerCrashed, match="chaos: killed while the entry ran"):
            await sup.call("echo", "sleep", {"seconds": 10})
        (injection,) = sup.status("echo").injections
        assert (injection.kind, injection.call_id) == ("kill_in_entry", 2)


async def test_a_kill_under_way_when_a_stop_begins_is_still_a_crash(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], ECHO) as sup:
        call = asyncio.create_task(sup.call("echo", "sleep", {"seconds": 30}))
        await wait_for(lambda: sup.status("echo").in_flight == 1)
        sup.chaos("echo").kill()
        await sup.stop_plugin("echo")
        with pytest.raises(WorkerCrashed, match="chaos: killed"):
            await call
        last_exit = sup.status("echo").last_exit
        assert last_exit is not None and last_exit.reason == "chaos: killed"
