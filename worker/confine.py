"""Confine the worker before any plugin code runs: rlimits, a subreaper, capabilities, the sandbox.

Called once from `worker.__main__`, on the main thread, before the plugin is
imported and before any thread exists (Landlock only covers the calling
thread and what it starts later). Returns a plain report the worker sends in
its `hello`, so the supervisor shows what really applied, not what was asked.

What each protection is for:
- RLIMIT_CORE 0: a crashing plugin never writes its memory (secrets) to disk.
- RLIMIT_NOFILE: fd exhaustion stays inside the worker.
- RLIMIT_CPU: the kernel's backstop behind the supervisor's CPU watcher (SIGXCPU).
- RLIMIT_DATA: the kernel's backstop behind the supervisor's memory watcher. Not
  RLIMIT_AS, which counts every thread's reserved stack and malloc's arenas and
  so fails small allocations in a worker with a few threads; the supervisor
  passes a data limit with headroom for those.
- Child subreaper: a descendant whose parent exits (double fork, `setsid`)
  is re-parented to the worker instead of init, so it stays in the worker's
  tree where the supervisor finds and kills it.
- CAP_SYS_RESOURCE dropped whenever a limit is set: a worker running as root
  could otherwise raise its own hard limits. With the sandbox, every
  capability is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from protocol.exits import EXIT_NO_RESOURCES, EXIT_OUT_OF_MEMORY
from protocol.record import Record

PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
CAP_SYS_RESOURCE = 24
LAST_CAP = 63  # PR_CAPBSET_DROP rejects numbers past the kernel's last capability with EINVAL

# The pid of the worker whose signals the sandbox confines to its own sandbox,
# once it does. A process forked from it inherits this module's state but shares
# the sandbox with the worker: its kill(-1) would reach the worker itself.
_scoped_worker_pid: int | None = None


class Limits(Record):
    """What the supervisor asks for (0 means no limit). A frozen record, not a
    dataclass: no methods compiled at every worker's start (protocol/record.py)."""

    __slots__ = ("data_limit_mb", "cpu_time_limit", "max_open_files", "sandbox", "network")
    data_limit_mb: int
    cpu_time_limit: float
    max_open_files: int
    sandbox: str          # "off" | "on" | "required"
    network: bool

    def __init__(
        self, data_limit_mb: int = 0, cpu_time_limit: float = 0.0, max_open_files: int = 0, sandbox: str = "off",
        network: bool = False,
    ) -> None:
        object.__setattr__(self, "data_limit_mb", data_limit_mb)
        object.__setattr__(self, "cpu_time_limit", cpu_time_limit)
        object.__setattr__(self, "max_open_files", max_open_files)
        object.__setattr__(self, "sandbox", sandbox)
        object.__setattr__(self, "network", network)


class SandboxRefused(Exception):
    """`sandbox = "required"` and the sandbox could not be applied: the worker must not start."""


def confine(plugin_dir: Path, limits: Limits) -> dict[str, Any]:
    """Apply everything in `limits` to this process; return the report for `hello`.

    Raises SandboxRefused when the sandbox is required and cannot be applied.
    """
    # The kernel's limits as they stand afterwards (None: unlimited): a request
    # above the hard limit is clamped, and the report shows the clamped value.
    _set_limit(resource.RLIMIT_CORE, 0)
    if limits.max_open_files:
        _set_limit(resource.RLIMIT_NOFILE, limits.max_open_files)
    if limits.cpu_time_limit:
        # Soft limit -> SIGXCPU a second after the supervisor's watcher should
        # have acted; hard limit -> SIGKILL if the plugin handles SIGXCPU.
        soft = math.ceil(limits.cpu_time_limit) + 1
        _set_limit(resource.RLIMIT_CPU, soft, soft + 1)
    if limits.data_limit_mb:
        _set_limit(resource.RLIMIT_DATA, limits.data_limit_mb * 1024 * 1024)
    report: dict[str, Any] = {
        "core_dumps": "off" if _soft(resource.RLIMIT_CORE) == 0 else "on",
        "rlimit_nofile": _soft(resource.RLIMIT_NOFILE),
        "rlimit_cpu": _soft(resource.RLIMIT_CPU),
        "rlimit_data_mb": _mb(_soft(resource.RLIMIT_DATA)),
    }
    report["subreaper"] = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if limits.sandbox != "off":
        report["sandbox"] = _apply_sandbox(plugin_dir, limits)
        if report["sandbox"].get("abi") and report["sandbox"].get("signals_scoped") is True:
            global _scoped_worker_pid
            _scoped_worker_pid = os.getpid()
        if not report["sandbox"]["abi"] and limits.sandbox == "required":
            raise SandboxRefused(f"sandbox = \"required\" but it cannot be applied: {report['sandbox']['reason']}")
    else:
        report["sandbox"] = {"abi": 0, "reason": "not requested (sandbox = false)"}
    if report["sandbox"].get("abi"):
        report["capabilities"] = "dropped" if _drop_capabilities(keep_none=True) else "unchanged"
    elif limits != Limits(sandbox=limits.sandbox, network=limits.network):
        report["capabilities"] = "CAP_SYS_RESOURCE dropped" if _drop_capabilities(keep_none=False) else "unchanged"
    return report


def _apply_sandbox(plugin_dir: Path, limits: Limits) -> dict[str, Any]:
    from worker import landlock  # only sandboxed workers pay for the import

    try:
        return landlock.restrict(plugin_dir, network=limits.network).as_dict()
    except (OSError, RuntimeError) as exc:
        return {"abi": 0, "filesystem": False, "network": "unrestricted", "signals_scoped": False,
                "reason": f"Landlock failed: {exc}"}


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower the limit (never past the current hard limit, which only root could raise)."""
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(which, (soft, hard))


def _soft(which: int) -> int | None:
    soft = resource.getrlimit(which)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _mb(value: int | None) -> int | None:
    return None if value is None else value // (1024 * 1024)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _prctl(option: int, arg: int) -> bool:
    libc = _libc()
    return libc is not None and libc.prctl(option, arg, 0, 0, 0) == 0


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _drop_capabilities(*, keep_none: bool) -> bool:
    """Drop CAP_SYS_RESOURCE (or every capability) from the bounding, effective,
    permitted and inheritable sets. A no-op for an unprivileged worker."""
    libc = _libc()
    if libc is None:
        return False
    doomed = range(LAST_CAP + 1) if keep_none else (CAP_SYS_RESOURCE,)
    for cap in doomed:
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails past the last capability or without CAP_SETPCAP: fine
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    if not any(d.effective or d.permitted for d in data):
        return False  # nothing to drop
    for index, d in enumerate(data):  # data[0] holds capabilities 0-31, data[1] 32-63
        keep = 0 if keep_none else 0xFFFFFFFF & ~(1 << CAP_SYS_RESOURCE if index == 0 else 0)
        d.effective &= keep
        d.permitted &= keep
        d.inheritable &= keep
    return libc.capset(ctypes.byref(header), data) == 0  # type: ignore[no-any-return]


def die_of_memory_error() -> NoReturn:
    """A MemoryError anywhere is fatal: the interpreter's state after one cannot be
    trusted, and the supervisor restarts a fresh worker. No allocation on this path."""
    with contextlib.suppress(OSError):
        os.write(2, b"MemoryError: the worker ran out of memory; exiting (a MemoryError is fatal in a worker)\n")
    with contextlib.suppress(BaseException):  # may itself run out of memory; the exit must happen
        kill_descendants()
    os._exit(EXIT_OUT_OF_MEMORY)


def die_of_exhaustion(what: str) -> NoReturn:
    """The worker cannot go on for want of a resource (a thread, mostly): exit like
    a MemoryError, but say what ran out."""
    with contextlib.suppress(OSError):
        os.write(2, f"{what}; the worker is out of resources and exits\n".encode("utf-8", "replace"))
    with contextlib.suppress(BaseException):
        kill_descendants()
    os._exit(EXIT_NO_RESOURCES)


def is_memory_error(exc: BaseException | None) -> bool:
    """A MemoryError, also one inside an exception group (asyncio.TaskGroup raises those)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(MemoryError) is not None
    return isinstance(exc, MemoryError)


def kill_descendants() -> None:
    """SIGKILL every descendant of this worker (the worker is their subreaper, so
    double-forked ones are still below it)."""
    if _scoped_worker_pid is not None and _scoped_worker_pid == os.getpid():
        # Sandboxed with scoped signals: /proc is closed to us, but the kernel
        # lets this process signal only its own sandbox, which holds exactly its
        # descendants. kill(-1) skips the caller, and a fork racing it is aborted.
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        _reap_children()
        return
    try:
        import psutil  # only needed on the way out
    except ImportError:
        return
    # Stop first, then kill: a stopped process cannot fork another child between our look and our kill.
    me = psutil.Process()
    stopped: dict[int, psutil.Process] = {}
    for _ in range(100):  # each round stops at least one more process, or ends
        try:
            fresh = [p for p in me.children(recursive=True) if p.pid not in stopped]
        except (psutil.Error, OSError):  # /proc unreadable (a sandbox without signal scoping)
            break
        if not fresh:
            break
        for proc in fresh:
            with contextlib.suppress(psutil.Error, OSError):
                proc.send_signal(signal.SIGSTOP)
            stopped[proc.pid] = proc
    for proc in stopped.values():
        with contextlib.suppress(psutil.Error, OSError):
            proc.kill()
    if stopped:
        _reap_children()


REAP_DEADLINE = 1.0


def _reap_children() -> None:
    """Wait until every child is gone, for at most REAP_DEADLINE s. As the subreaper,
    the worker inherits each descendant whose parent dies, so once it has no child
    left, every process it killed is dead: when the worker's exit is seen, they are."""
    deadline = time.monotonic() + REAP_DEADLINE
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        except OSError:
            return
        if pid == 0:
            time.sleep(0.002)  # children still dying; bounded by the deadline
