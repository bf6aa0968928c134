"""Real misbehaving plugins (plugins/faults/): each gives the specified error within
its time bound; other plugins keep answering meanwhile; the next call after a
restart succeeds; and no process is left behind after stop().

Faults that can be injected into any plugin (kills at each phase of a call,
freezes, lost, late and corrupted frames, failed starts) are the matrix of
test_matrix.py, built on the chaos API; what stays here is what only a plugin's
own code can do: segfault, busy-loop, swallow a cancel, print to stdout, leave
grandchildren, ignore SIGTERM, write broken frames itself."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

import protocol
from supervisor import (
    CallTimeout,
    InvalidArguments,
    PluginOverloaded,
    PluginUnavailable,
    ProtocolError,
    ResultNotSerializable,
    Supervisor,
    WorkerCrashed,
)
from tests.conftest import pid_alive
from tests.faults.helpers import supervising, wait_for

TIMEOUT_SLACK = 0.25  # the spec: CallTimeout by the deadline, a quarter second late at most
pytestmark = pytest.mark.usefixtures("no_leaks")


async def healthy_calls(sup: Supervisor, stop: asyncio.Event) -> int:
    """Keep calling the echo plugin until told to stop; every call must succeed."""
    count = 0
    while not stop.is_set():
        assert await sup.call("echo", "echo", {"value": count}, timeout=5) == count
        count += 1
    return count


@pytest.mark.parametrize("entry", ["crash", "crash_async"])
async def test_crash_fails_the_call_at_once_and_the_plugin_restarts(tmp_path: Path, entry: str) -> None:
    async with supervising(tmp_path, ["crash", "echo"]) as sup:
        first_pid = sup.status("crash").pid
        stop = asyncio.Event()
        others = asyncio.create_task(healthy_calls(sup, stop))
        try:
            await check_crash_and_restart(sup, entry, first_pid)
        finally:
            stop.set()
        assert await others > 0


async def check_crash_and_restart(sup: Supervisor, entry: str, first_pid: int | None) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerCrashed) as caught:
        await sup.call("crash", entry, {"code": 7}, timeout=10)
    assert time.monotonic() - started < 2.0
    assert caught.value.returncode == 7
    assert "exited with code 7" in str(caught.value)
    # The status is current by the time the caller hears of the crash.
    right_after = sup.status("crash")
    assert right_after.state in ("starting", "running")
    assert right_after.restarts == 1
    assert right_after.last_exit is not None and right_after.last_exit.returncode == 7
    assert await sup.call("crash", "ping", timeout=10) == "pong"
    status = sup.status("crash")
    assert status.state == "running"
    assert status.restarts == 1
    assert status.pid != first_pid
    assert status.last_exit is not None and status.last_exit.returncode == 7


async def test_segfault_is_reported_with_the_signal_and_stderr(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["segfault"]) as sup:
        with pytest.raises(WorkerCrashed) as caught:
            await sup.call("segfault", "segfault", timeout=10)
        assert caught.value.signal == signal.SIGSEGV
        assert "SIGSEGV" in str(caught.value)
        # faulthandler in the worker leaves the Python traceback in its stderr.
        assert any("Segmentation fault" in line for line in caught.value.stderr_tail)
        assert await sup.call("segfault", "ping", timeout=10) == "pong"


@pytest.mark.parametrize("entry", ["spin", "sleep_forever"])
async def test_sync_hang_times_out_then_the_worker_is_killed_and_replaced(tmp_path: Path, entry: str) -> None:
    async with supervising(tmp_path, ["busy_loop", "echo"], cancel_grace=0.3) as sup:
        first_pid = sup.status("busy_loop").pid
        assert first_pid is not None
        started = time.monotonic()
        with pytest.raises(CallTimeout) as caught:
            await sup.call("busy_loop", entry, timeout=0.5)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 0.5 + TIMEOUT_SLACK
        assert isinstance(caught.value, TimeoutError)
        # A running sync entry cannot be interrupted: after the grace its worker is killed.
        await wait_for(lambda: sup.status("busy_loop").restarts == 1)
        assert await sup.call("busy_loop", "ping", timeout=10) == "pong"
        assert sup.status("busy_loop").pid != first_pid
        last_exit = sup.status("busy_loop").last_exit
        assert last_exit is not None
        assert "did not stop within 0.3 s" in last_exit.reason
        assert not pid_alive(first_pid)
        assert await sup.call("echo", "echo", {"value": 1}) == 1


async def test_async_hang_is_cancelled_without_killing_the_worker(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["async_hang"], cancel_grace=0.5) as sup:
        pid = sup.status("async_hang").pid
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            await sup.call("async_hang", "hang", timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 0.3 + TIMEOUT_SLACK
        assert await sup.call("async_hang", "ping", timeout=5) == "pong"
        # The cancel reached the task, so nothing had to be killed.
        assert sup.status("async_hang").pid == pid
        assert sup.status("async_hang").restarts == 0


async def test_async_hang_that_swallows_cancel_gets_its_worker_killed(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["async_hang"], cancel_grace=0.3) as sup:
        pid = sup.status("async_hang").pid
        with pytest.raises(CallTimeout):
            await sup.call("async_hang", "hang_ignoring_cancel", timeout=0.3)
        await wait_for(lambda: sup.status("async_hang").restarts == 1)
        assert await sup.call("async_hang", "ping", timeout=10) == "pong"
        assert sup.status("async_hang").pid != pid


async def test_other_calls_in_flight_fail_with_worker_crashed_when_a_hang_is_killed(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["busy_loop"], cancel_grace=0.2) as sup:
        bystander = asyncio.create_task(sup.call("busy_loop", "sleep_forever", timeout=30))
        with pytest.raises(CallTimeout):
            await sup.call("busy_loop", "spin", timeout=0.3)
        with pytest.raises(WorkerCrashed):
            await asyncio.wait_for(bystander, 5)


@pytest.mark.parametrize(
    ("entry", "marker"),
    [("print_noise", "stray_output: line 99"), ("os_write", "stray_output: os.write"), ("c_write", "stray_output: puts"), ("child_echo", "hi")],
)
async def test_stray_output_to_fd_1_never_corrupts_a_frame(tmp_path: Path, entry: str, marker: str) -> None:
    async with supervising(tmp_path, ["stray_output"]) as sup:
        pid = sup.status("stray_output").pid
        assert await sup.call("stray_output", entry, timeout=10) == {"ok": True}
        assert await sup.call("stray_output", "ping", timeout=10) == "pong"
        status = sup.status("stray_output")
        assert (status.pid, status.restarts) == (pid, 0)
        # The noise went to the plugin's log (stderr), not into the protocol.
        await wait_for(lambda: any(line.endswith(marker) for line in sup.logs("stray_output")))


async def test_slow_start_is_waited_for_by_calls(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["slow_start"], auto_start=False) as sup:
        starting = asyncio.create_task(sup.start_plugin("slow_start"))
        await sup.wait_for_state("slow_start", "starting", timeout=5)
        # A call that arrives while the worker starts waits for it, within its own timeout.
        assert await sup.call("slow_start", "ping", timeout=10) == "pong"
        await starting


async def test_start_that_misses_its_handshake_timeout_fails_the_plugin(tmp_path: Path) -> None:
    runtime = {"slow_start": {"timeout": 0.5, "max_restarts": 1}}
    async with supervising(tmp_path, ["slow_start", "echo"], runtime, auto_start=False) as sup:
        (Path(sup.status("slow_start").folder) / "delay.txt").write_text("30")
        started = time.monotonic()
        await sup.start_plugin("slow_start")  # returns once the first start has failed
        assert time.monotonic() - started < 0.5 + 1.0
        await sup.wait_for_state("slow_start", "failed", timeout=10)
        status = sup.status("slow_start")
        assert "did not become ready within 0.5 s" in (status.error or "")
        with pytest.raises(PluginUnavailable):
            await sup.call("slow_start", "ping", timeout=1)


async def test_import_error_is_reported_with_its_traceback_and_others_run(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["import_error", "echo"]) as sup:
        await sup.wait_for_state("import_error", "failed", timeout=10)
        status = sup.status("import_error")
        assert "ModuleNotFoundError" in (status.error or "")
        assert "Traceback" in (status.error or "")
        assert status.restarts == 2  # max_restarts = 2 in its manifest
        started = time.monotonic()
        with pytest.raises(PluginUnavailable, match="failed"):
            await sup.call("import_error", "ping", timeout=5)
        assert time.monotonic() - started < 0.5  # fails fast, does not wait for the 5 s timeout
        assert await sup.call("echo", "echo", {"value": "still here"}) == "still here"
        # restart() resets the budget and tries again: three more workers (and fails again, here).
        spawned = sum("started" in line for line in sup.logs("import_error"))
        await sup.restart("import_error")
        await sup.wait_for_state("import_error", "failed", timeout=10)
        assert sum("started" in line for line in sup.logs("import_error")) == spawned + 3


@pytest.mark.parametrize(("entry", "type_name"), [("bad", "object"), ("bad_set", "set")])
async def test_unserializable_result_names_the_type_and_keeps_the_worker(tmp_path: Path, entry: str, type_name: str) -> None:
    async with supervising(tmp_path, ["unserializable"]) as sup:
        pid = sup.status("unserializable").pid
        with pytest.raises(ResultNotSerializable, match=type_name):
            await sup.call("unserializable", entry, timeout=5)
        assert await sup.call("unserializable", "ok", timeout=5) == 1
        assert sup.status("unserializable").pid == pid


async def test_grandchildren_are_killed_on_stop(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["grandchild"]) as sup:
        pids = (await sup.call("grandchild", "spawn", timeout=5))["pids"]
        assert all(pid_alive(pid) for pid in pids)
    # stop() returned: both grandchildren (one in its own session) are gone.
    assert not any(pid_alive(pid) for pid in pids)


async def test_grandchildren_of_a_crashed_worker_are_killed(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["grandchild"]) as sup:
        with pytest.raises(WorkerCrashed):
            await sup.call("grandchild", "spawn_and_crash", timeout=5)
        pids = [int(line) for line in (Path(sup.status("grandchild").folder) / "pids.txt").read_text().split()]
        await wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=5)
        assert await sup.call("grandchild", "ping", timeout=10) == "pong"


async def test_stop_escalates_to_sigkill_for_a_sigterm_ignorer(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["sigterm_ignorer"]) as sup:
        pid = sup.status("sigterm_ignorer").pid
        started = time.monotonic()
        await sup.stop_plugin("sigterm_ignorer")
        elapsed = time.monotonic() - started
        # shutdown_timeout 0.5 s, then SIGTERM (ignored), then SIGKILL 2 s later.
        assert 2.5 <= elapsed < 4.0
        status = sup.status("sigterm_ignorer")
        assert status.state == "stopped"
        assert status.last_exit is not None and status.last_exit.signal == signal.SIGKILL
        assert not pid_alive(pid)


async def test_restart_budget_spent_marks_failed_until_restart(tmp_path: Path) -> None:
    runtime = {"crash": {"max_restarts": 2, "restart_window": 60}}
    async with supervising(tmp_path, ["crash"], runtime) as sup:
        for _ in range(3):
            await sup.wait_for_state("crash", "running", timeout=10)
            with pytest.raises(WorkerCrashed):
                await sup.call("crash", "crash", timeout=10)
        await sup.wait_for_state("crash", "failed", timeout=10)
        assert "more than 2 crashes within 60 s" in (sup.status("crash").error or "")
        with pytest.raises(PluginUnavailable):
            await sup.call("crash", "ping", timeout=5)
        await sup.restart("crash")
        assert sup.status("crash").state == "running"
        assert await sup.call("crash", "ping", timeout=5) == "pong"


async def test_restart_policy_never_leaves_the_plugin_failed(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["crash"], {"crash": {"restart": "never"}}) as sup:
        with pytest.raises(WorkerCrashed):
            await sup.call("crash", "crash", timeout=10)
        await sup.wait_for_state("crash", "failed", timeout=10)
        assert sup.status("crash").restarts == 0
        assert "restart policy is 'never'" in (sup.status("crash").error or "")


async def test_queue_full_fails_at_once_with_overloaded(tmp_path: Path) -> None:
    runtime = {"echo": {"max_concurrency": 1, "max_queue": 2}}
    async with supervising(tmp_path, ["echo"], runtime) as sup:
        busy = [asyncio.create_task(sup.call("echo", "asleep", {"seconds": 30}, timeout=60)) for _ in range(3)]
        await wait_for(lambda: sup.status("echo").queued == 2)
        started = time.monotonic()
        with pytest.raises(PluginOverloaded):
            await sup.call("echo", "echo", {"value": 1})
        assert time.monotonic() - started < 0.5
        for task in busy:
            task.cancel()
        results = await asyncio.gather(*busy, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        # The cancelled async call was stopped in the worker, not by a kill.
        assert await sup.call("echo", "echo", {"value": 2}, timeout=5) == 2
        assert sup.status("echo").restarts == 0


async def test_timeout_in_the_queue_counts_from_arrival(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], {"echo": {"max_concurrency": 1}}) as sup:
        blocker = asyncio.create_task(sup.call("echo", "asleep", {"seconds": 1.0}, timeout=10))
        await wait_for(lambda: sup.status("echo").in_flight == 1)
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            await sup.call("echo", "echo", {"value": 1}, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.2 + TIMEOUT_SLACK
        assert await blocker == 1.0


async def test_unencodable_argument_is_invalid_arguments(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"]) as sup:
        with pytest.raises(InvalidArguments, match="cannot be encoded"):
            await sup.call("echo", "echo", {"value": object()})
        assert await sup.call("echo", "echo", {"value": 3}) == 3


async def test_a_200_kb_stderr_line_does_not_break_the_log(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["stray_output"]) as sup:
        await sup.call("stray_output", "long_line", {"size": 200_000}, timeout=10)
        assert await sup.call("stray_output", "ping", timeout=5) == "pong"
        pieces = [line for line in sup.logs("stray_output") if line.startswith("x")]
        assert sum(len(p) for p in pieces) >= 200_000
        assert Path(sup.status("stray_output").log_path or "").stat().st_size > 200_000  # noqa: ASYNC240 - a test reading a local file


@pytest.mark.parametrize("entry", ["huge_header", "garbage", "wrong_shape", "unknown_call_id"])
async def test_protocol_violation_kills_the_worker_and_fails_the_call(tmp_path: Path, entry: str) -> None:
    async with supervising(tmp_path, ["protocol_breaker", "echo"]) as sup:
        pid = sup.status("protocol_breaker").pid
        started = time.monotonic()
        with pytest.raises(ProtocolError) as caught:
            await sup.call("protocol_breaker", entry, timeout=10)
        assert time.monotonic() - started < 2.0
        assert isinstance(caught.value, protocol.ProtocolError)  # one class, both layers
        assert await sup.call("protocol_breaker", "ping", timeout=10) == "pong"
        assert sup.status("protocol_breaker").pid != pid
        assert await sup.call("echo", "echo", {"value": 1}) == 1


async def test_frames_over_the_limit_are_refused_on_both_sides(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["echo"], max_frame_size=64 * 1024) as sup:
        pid = sup.status("echo").pid
        with pytest.raises(InvalidArguments, match="too large"):
            await sup.call("echo", "echo", {"value": b"x" * 100_000})
        # The worker refuses to send a result over the limit, and stays up.
        with pytest.raises(ResultNotSerializable, match="exceeds the limit"):
            await sup.call("echo", "repeat", {"value": "x", "times": 100_000})
        assert await sup.call("echo", "echo", {"value": b"x" * 60_000}) == b"x" * 60_000
        assert sup.status("echo").pid == pid
