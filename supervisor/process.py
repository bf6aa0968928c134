"""OS mechanics for one worker process: the command, the environment, signals to its tree.

No asyncio and no policy here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

import protocol
from supervisor.manifest import RuntimeOptions

# What an ordinary program needs; everything else (API keys, tokens, cloud
# credentials) stays in the host.
ENV_ALLOW = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM", "SHELL",
     "SSL_CERT_FILE", "SSL_CERT_DIR"}
)
ENV_ALLOW_PREFIXES = ("LC_",)
# Never passed on, even when an operator allows it by name: the host service's API token.
ENV_NEVER = frozenset({"NEKO_SUPERVISOR_TOKEN"})
# Nor a cluster's: Ray's token, address and session (a worker launched on Ray
# runs in the environment of the Ray actor that spawns it).
ENV_NEVER_PREFIXES = ("RAY_",)

# The folder that holds the `protocol`, `worker` and `supervisor` packages
# (the source checkout, or site-packages when installed).
CODE_ROOT = Path(protocol.__file__).resolve().parent.parent


def worker_env(extra_allow: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if source is None else source
    allow = ENV_ALLOW | frozenset(extra_allow)
    env = {
        k: v for k, v in source.items()
        if (k in allow or k.startswith(ENV_ALLOW_PREFIXES)) and k not in ENV_NEVER and not k.startswith(ENV_NEVER_PREFIXES)
    }
    # `-P` keeps the plugin folder (the cwd) off sys.path, so the worker package
    # must be found through PYTHONPATH when the project is not installed.
    env["PYTHONPATH"] = str(CODE_ROOT)
    env.setdefault("PATH", os.defpath)
    # Fewer malloc arenas: less address space reserved per thread, so the
    # RLIMIT_DATA backstop measures the plugin's data rather than glibc's spares.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


# Room a worker needs beyond its plugin's data under RLIMIT_DATA: each thread's
# stack counts (8 MiB reserved by default), so the backstop grows with the pool.
THREAD_STACK_MB = 8
BACKSTOP_THREADS = 128  # beyond the call pool: the loop's helpers, timers, a plugin's own threads


def data_limit_mb(runtime: RuntimeOptions) -> int:
    """The kernel backstop behind the memory watcher: twice the limit (at least
    256 MiB more) plus every possible pool thread's stack, so it never fires on a
    plugin the watcher would leave alone. 0 when there is no memory limit."""
    limit = runtime.memory_limit_mb
    if not limit:
        return 0
    return limit + max(limit, 256) + (runtime.max_concurrency + BACKSTOP_THREADS) * THREAD_STACK_MB


def worker_args(
    max_frame_size: int, runtime: RuntimeOptions | None = None, sandbox: str = "off", network: bool = False, standby: bool = False,
) -> list[str]:
    """The worker's options after its plugin folder, wherever it runs."""
    args = ["--max-frame-size", str(max_frame_size), "--sandbox", sandbox]
    if runtime is not None:
        args += [
            "--data-limit-mb", str(data_limit_mb(runtime)),
            "--cpu-time-limit", str(runtime.cpu_time_limit),
            "--max-open-files", str(runtime.max_open_files),
        ]
    if network:
        args.append("--network")
    if standby:
        args.append("--standby")
    return args


def command_for(plugin_dir: Path | str, parent_pid: int, args: Iterable[str]) -> list[str]:
    """The command line of a worker for `plugin_dir`, whose parent is `parent_pid`."""
    return [
        sys.executable,
        "-P",  # never import from the cwd (the plugin folder): a plugin's msgpack.py must not shadow ours
        "-m",
        "worker",
        str(plugin_dir),
        "--parent-pid",
        str(parent_pid),
        *args,
    ]


def worker_command(
    plugin_dir: Path, max_frame_size: int, runtime: RuntimeOptions | None = None, sandbox: str = "off", network: bool = False,
    standby: bool = False,
) -> list[str]:
    """The command line of a worker started by this process."""
    return command_for(plugin_dir, os.getpid(), worker_args(max_frame_size, runtime, sandbox, network, standby))


def spawn(plugin_dir: Path, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the worker `command` in the plugin folder, in its own process group, no shell."""
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=plugin_dir,
        env=env,
        close_fds=True,
        process_group=0,
    )


def open_pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (signals to it can never hit a recycled pid), or None if unsupported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# Every worker gets a unique token in this variable. Descendants inherit it, so
# a grandchild that left the process group (setsid, double fork) and was
# reparented after the worker died can still be found and killed.
TAG_VARIABLE = "NEKO_SUPERVISOR_WORKER"


def tagged(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries this worker's token."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TAG_VARIABLE) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def signal_group(pid: int, pidfd: int | None, sig: int) -> None:
    """Send `sig` to the worker and its process group.

    Call it while the worker is not yet reaped: its pid, and so its process
    group id, cannot be reused until then.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    if pidfd is not None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(pidfd, sig)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_tagged(token: str) -> list[psutil.Process]:
    """SIGKILL every process carrying the worker's tag; returns them."""
    found = tagged(token)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return found
