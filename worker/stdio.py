"""Claim the protocol pipes before any plugin code runs, and die with the parent.

After `claim_stdio()`:
- the protocol reads from a private, close-on-exec duplicate of fd 0 and writes
  to a private, close-on-exec duplicate of fd 1, so child processes inherit
  neither end;
- fd 0 is /dev/null and fd 1 is a duplicate of fd 2 (stderr), so `print()`,
  `os.write(1, ...)`, C code writing to stdout and child processes all land in
  the worker's stderr, which the supervisor logs, and can never corrupt a frame.
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def claim_stdio() -> tuple[int, int]:
    """Return (protocol_in_fd, protocol_out_fd) and neutralise fds 0 and 1."""
    protocol_in = os.dup(0)
    protocol_out = os.dup(1)
    # os.dup makes non-inheritable (O_CLOEXEC) descriptors since Python 3.4.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # sys.stdout still wraps fd 1, which is now stderr; make it line-buffered
    # so a plugin's prints appear in the log promptly.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    return protocol_in, protocol_out


def die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies, then close the race.

    PR_SET_PDEATHSIG fires when the parent *thread* exits; if the supervisor
    died between fork and this call, the signal never comes, so re-check
    getppid() against the pid the supervisor passed us.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not fatal: stdin EOF still ends the worker
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(70)
