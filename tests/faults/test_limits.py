"""Resource limits, each proven by the `hog` plugin: the attempt works without the
limit (so the test can fail), and with it the worker is stopped, the caller is
told why, and the plugin comes back."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import Supervisor, WorkerCrashed
from tests.conftest import pid_alive
from tests.faults.helpers import supervising, wait_for

pytestmark = pytest.mark.usefixtures("no_leaks")

FAST_WATCH = 0.05  # seconds between the watcher's looks: limits act within about this


def hog(**runtime: Any) -> dict[str, dict[str, Any]]:
    return {"hog": {"max_restarts": 50, **runtime}}


async def crash_of(sup: Supervisor, entry: str, args: dict[str, Any]) -> WorkerCrashed:
    with pytest.raises(WorkerCrashed) as caught:
        await sup.call("hog", entry, args, timeout=20)
    await sup.wait_for_state("hog", "running")
    assert await sup.call("hog", "ping") == "pong", "the plugin must come back after the kill"
    return caught.value


# -- memory ------------------------------------------------------------------------

async def test_a_slow_leak_is_killed_at_the_memory_limit(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(memory_limit_mb=64), watch_interval=FAST_WATCH) as sup:
        crash = await crash_of(sup, "grow", {"mb": 400, "pause": 0.005})
        assert "memory limit hit" in str(crash) and "memory_limit_mb = 64" in str(crash)
        assert sup.status("hog").restarts == 1


async def test_without_a_memory_limit_the_same_leak_succeeds(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(memory_limit_mb=0), watch_interval=FAST_WATCH) as sup:
        assert await sup.call("hog", "grow", {"mb": 200, "pause": 0.002}) == 200
        assert sup.status("hog").memory_rss is not None
        await wait_for(lambda: (sup.status("hog").memory_rss or 0) > 200 * 1024 * 1024)


async def test_a_sudden_bomb_hits_the_kernel_backstop_and_memory_error_is_fatal(tmp_path: Path) -> None:
    # One allocation far past the limit fails at once under RLIMIT_DATA, faster than any watcher.
    async with supervising(tmp_path, ["hog"], hog(memory_limit_mb=64), watch_interval=30) as sup:
        crash = await crash_of(sup, "bomb", {"mb": 4096})
        assert crash.returncode == 4
        assert "memory limit hit: MemoryError" in str(crash)
        protections = sup.status("hog").protections
        assert 64 < protections["rlimit_data_mb"] < 4096


async def test_without_a_memory_limit_the_bomb_allocates(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(memory_limit_mb=0), watch_interval=30) as sup:
        assert await sup.call("hog", "bomb", {"mb": 1700}) == 1700  # more than the 64 MB limit's backstop (1600 MB)
        assert sup.status("hog").protections["rlimit_data_mb"] is None


async def test_a_plugin_well_under_its_limit_is_never_disturbed_even_with_many_threads(tmp_path: Path) -> None:
    # 32 pool threads reserve 256 MB of stacks: an RLIMIT_AS of 200 MB would fail here.
    runtime = hog(memory_limit_mb=200, max_concurrency=32)
    async with supervising(tmp_path, ["hog"], runtime, watch_interval=FAST_WATCH) as sup:
        results = await asyncio.gather(*(sup.call("hog", "hold", {"mb": 2, "seconds": 0.3}) for _ in range(32)))
        assert results == [2] * 32
        assert await sup.call("hog", "bomb", {"mb": 100}) == 100
        status = sup.status("hog")
        assert (status.restarts, status.state) == (0, "running")


# -- CPU ---------------------------------------------------------------------------

async def test_cpu_spin_past_its_limit_is_killed_by_the_watcher(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(cpu_time_limit=1), watch_interval=FAST_WATCH) as sup:
        crash = await crash_of(sup, "spin", {"seconds": 30})
        assert "CPU time limit hit" in str(crash) and "cpu_time_limit = 1" in str(crash)


async def test_cpu_spin_is_stopped_by_the_kernel_when_the_watcher_is_slow(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(cpu_time_limit=1), watch_interval=30) as sup:
        crash = await crash_of(sup, "spin", {"seconds": 30})
        assert "CPU time limit hit: the kernel's RLIMIT_CPU" in str(crash)


async def test_without_a_cpu_limit_the_spin_completes(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(cpu_time_limit=0), watch_interval=FAST_WATCH) as sup:
        assert await sup.call("hog", "spin", {"seconds": 1.5}) > 0
        assert sup.status("hog").restarts == 0


# -- file descriptors --------------------------------------------------------------

@pytest.mark.parametrize(("limit", "attempt", "refused"), [(64, 5000, True), (8192, 5000, False)])
async def test_fd_exhaustion_stays_inside_the_worker(tmp_path: Path, limit: int, attempt: int, refused: bool) -> None:
    async with supervising(tmp_path, ["hog"], hog(max_open_files=limit)) as sup:
        outcome = await sup.call("hog", "open_files", {"limit": attempt})
        if refused:
            assert outcome["opened"] < limit and outcome["error"] == "Too many open files"
        else:
            assert outcome == {"opened": attempt, "error": None}
        assert await sup.call("hog", "ping") == "pong"
        assert sup.status("hog").restarts == 0
        assert sup.status("hog").protections["rlimit_nofile"] == limit


# -- processes ---------------------------------------------------------------------

async def test_a_fork_loop_is_killed_at_the_process_limit_with_all_its_children(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(max_processes=8), watch_interval=FAST_WATCH) as sup:
        crash = await crash_of(sup, "fork", {"count": 40, "pause": 0.02})
        assert "process limit hit" in str(crash) and "max_processes = 8" in str(crash)
        assert sup.status("hog").processes in (None, 1)  # the new worker, alone (None until the first look)


async def test_without_a_process_limit_the_fork_loop_runs_and_stop_still_reaps_it(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(max_processes=0), watch_interval=FAST_WATCH) as sup:
        pids = await sup.call("hog", "fork", {"count": 40})
        assert len(pids) == 40 and all(pid_alive(pid) for pid in pids)
        await sup.stop_plugin("hog")
        assert not [pid for pid in pids if pid_alive(pid)]


# -- escapes -----------------------------------------------------------------------

def _environment_of(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


async def test_an_escaped_grandchild_without_a_tag_dies_on_restart(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(), watch_interval=FAST_WATCH) as sup:
        escapee = await sup.call("hog", "escape")
        # What the core's env-tag scan alone would have missed: no tag, own session.
        assert _environment_of(escapee) == {}
        assert psutil.Process(escapee).ppid() == sup.status("hog").pid, "re-parented to the worker, its subreaper"
        await sup.restart("hog")
        assert not pid_alive(escapee)


async def test_an_escaped_grandchild_dies_when_its_worker_is_killed_from_outside(tmp_path: Path) -> None:
    async with supervising(tmp_path, ["hog"], hog(), watch_interval=FAST_WATCH) as sup:
        escapee = await sup.call("hog", "escape")
        await wait_for(lambda: (sup.status("hog").processes or 0) >= 2)  # the watcher has seen it
        worker = sup.status("hog").pid
        assert worker is not None
        psutil.Process(worker).kill()
        await wait_for(lambda: sup.status("hog").restarts == 1 and sup.status("hog").state == "running")
        await wait_for(lambda: not pid_alive(escapee), timeout=5)


async def test_an_escaped_grandchild_dies_when_sigterm_ends_its_worker(tmp_path: Path) -> None:
    # SIGTERM's default action ends the worker before it can clean up; the
    # watcher never looked (interval 30 s): the stop sequence must look itself.
    async with supervising(tmp_path, ["hog"], hog(shutdown_timeout=0.2), watch_interval=30) as sup:
        escapee = await sup.call("hog", "escape")
        await sup.call("hog", "block_shutdown")
        await sup.stop_plugin("hog")
        exit_info = sup.status("hog").last_exit
        assert exit_info is not None and exit_info.signal == signal.SIGTERM, exit_info
        assert not pid_alive(escapee)


async def test_the_kernel_limits_are_really_in_force_seen_from_outside(tmp_path: Path) -> None:
    runtime = hog(memory_limit_mb=100, cpu_time_limit=7, max_open_files=128)
    async with supervising(tmp_path, ["hog"], runtime) as sup:
        status = sup.status("hog")
        assert status.pid is not None
        worker = psutil.Process(status.pid)  # read from /proc: not what the worker claims, what the kernel holds
        assert worker.rlimit(psutil.RLIMIT_CORE) == (0, 0)
        assert worker.rlimit(psutil.RLIMIT_NOFILE) == (128, 128)
        assert worker.rlimit(psutil.RLIMIT_CPU) == (8, 9)
        data_soft, _ = worker.rlimit(psutil.RLIMIT_DATA)
        assert data_soft == status.protections["rlimit_data_mb"] * 1024 * 1024
        assert status.protections["rlimit_cpu"] == 8 and status.protections["rlimit_nofile"] == 128
        assert 200 * 1024 * 1024 <= data_soft < 2048 * 1024 * 1024
        assert worker.environ().get("MALLOC_ARENA_MAX") == "2"


async def test_cpu_burnt_in_reaped_grandchildren_counts(tmp_path: Path) -> None:
    # The middle process reaps each grandchild: their CPU shows only in its children's time.
    async with supervising(tmp_path, ["hog"], hog(cpu_time_limit=1), watch_interval=FAST_WATCH) as sup:
        started = asyncio.get_running_loop().time()
        crash = await crash_of(sup, "spin_in_grandchildren", {"seconds": 20})
        assert "CPU time limit hit" in str(crash)
        assert asyncio.get_running_loop().time() - started < 10, "killed at the limit, not when the middle process ended"


async def test_many_idle_threads_do_not_trip_the_memory_backstop(tmp_path: Path) -> None:
    # Each thread reserves an 8 MiB stack, which RLIMIT_DATA counts: 120 of them are ~1 GB of address space.
    async with supervising(tmp_path, ["hog"], hog(memory_limit_mb=64), watch_interval=FAST_WATCH) as sup:
        assert await sup.call("hog", "threads", {"count": 120}) > 120
        assert await sup.call("hog", "bomb", {"mb": 16}) == 16
        assert (sup.status("hog").restarts, sup.status("hog").state) == (0, "running")


async def test_pages_shared_by_forked_children_are_not_counted_once_per_child(tmp_path: Path) -> None:
    # 300 MB touched, then 3 forks: resident sizes add up to about 1.2 GB, but the
    # tree holds about 300 MB. Over the limit by the cheap sum, the proportional one decides.
    async with supervising(tmp_path, ["hog"], hog(memory_limit_mb=600), watch_interval=FAST_WATCH) as sup:
        assert await sup.call("hog", "grow", {"mb": 300}) == 300
        await sup.call("hog", "fork", {"count": 3})

        def measured_whole_tree_under_limit() -> bool:
            status = sup.status("hog")
            return status.processes == 4 and status.memory_rss is not None and status.memory_rss < 600 * 1024 * 1024

        await wait_for(measured_whole_tree_under_limit)
        assert (sup.status("hog").restarts, sup.status("hog").state) == (0, "running")
