"""A worker's process tree: find it, measure it, stop it, kill it. Blocking calls, no asyncio.

How a worker's descendants are kept findable:
- the worker is a child subreaper (worker/confine.py): a process whose parent
  exits (double fork) is re-parented to the worker, so while the worker lives
  every descendant, `setsid` or not, is in its tree;
- the resource watcher (supervisor/watch.py) keeps the latest snapshot of the
  tree, so descendants orphaned by a worker that died on its own can still be
  found, as psutil objects that refuse to signal a recycled pid;
- every descendant inherits the worker's environment tag (process.TAG_VARIABLE)
  unless it cleared its environment.

Killing is "stop, then kill": each round SIGSTOPs every process found, and a
stopped process cannot fork, so the rounds end; then everything gets SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

MAX_STOP_ROUNDS = 100  # each round stops at least one new process; a fork bomb ends long before


def parent_map() -> dict[int, int]:
    """pid -> parent pid for every process. Reads /proc directly where it exists:
    about four times faster than psutil.process_iter, and this runs every watcher tick."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {proc.pid: proc.info["ppid"] for proc in psutil.process_iter(["ppid"])}
    parents: dict[int, int] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                data = stat.read()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            parents[int(name)] = int(data[data.rindex(b")") + 2 :].split(b" ", 2)[1])
        except (OSError, ValueError):
            continue  # exited while we looked
    return parents


def children_map(parents: dict[int, int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    return children


def tree(root: psutil.Process, children: dict[int, list[int]], known: dict[int, psutil.Process] | None = None) -> list[psutil.Process]:
    """`root` and its live descendants, parents first.

    The table may be a moment old, and a pid in it may already name another
    process: each one is taken only if, now, its parent is the verified process
    above it and it is no older than that parent. Zombies are left out (they
    run nothing and hold nothing but their pid)."""
    known = known or {}
    found = [root]
    todo = [root]
    seen = {root.pid}
    while todo:
        parent = todo.pop()
        for pid in children.get(parent.pid, ()):
            if pid in seen:
                continue
            seen.add(pid)
            proc = known.get(pid) or _process(pid)
            if proc is not None and _alive_child_of(proc, parent):
                found.append(proc)
                todo.append(proc)
    return found


def _alive_child_of(proc: psutil.Process, parent: psutil.Process) -> bool:
    try:
        return (
            proc.is_running()  # for a Process from an earlier look: not a recycled pid
            and proc.ppid() == parent.pid
            and proc.create_time() >= parent.create_time()
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


@dataclass(slots=True)
class TreeUsage:
    """One look at a worker's tree: its live processes and what they use together."""

    processes: list[psutil.Process] = field(default_factory=list)  # the worker first; empty when measured on another node
    rss: int = 0          # bytes: resident sizes summed; proportional ones past the limit (see measure)
    cpu_time: float = 0.0  # seconds of user + system CPU, reaped children included
    count: int = 0        # live processes in the tree


def measure(
    worker: psutil.Process, parents: dict[int, int], known: dict[int, psutil.Process], memory_limit: int | None = None
) -> TreeUsage:
    """Measure `worker` and its descendants. `known` (pid -> Process from earlier
    looks) is reused so a process keeps its identity (and its create time) across looks.

    Memory is the sum of resident sizes, cheap to read. Forked processes share
    pages, which that sum counts once per process: when it passes `memory_limit`
    in a tree of several processes, the proportional sizes (each shared page split
    among its sharers; a few ms per process to read) decide instead."""
    usage = TreeUsage()
    for proc in tree(worker, children_map(parents), known):
        try:
            with proc.oneshot():
                rss = proc.memory_info().rss
                times = proc.cpu_times()
        except psutil.Error:
            continue
        usage.rss += rss
        # Children's time too, for every process: a middle process that reaps
        # CPU-burning children must not launder their time out of the tree.
        usage.cpu_time += times.user + times.system + times.children_user + times.children_system
        usage.processes.append(proc)
        usage.count += 1
    if memory_limit is not None and usage.rss > memory_limit and usage.count > 1:
        usage.rss = sum(_proportional_size(proc) for proc in usage.processes)
    return usage


def _proportional_size(proc: psutil.Process) -> int:
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(proc.memory_info().rss)  # no smaps_rollup (kernel < 4.14): the upper bound
    except psutil.Error:
        return 0


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def alive(proc: psutil.Process) -> bool:
    """Running code: not a recycled pid, not gone, not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_descendants(root: psutil.Process | None, known: Iterable[psutil.Process] = ()) -> list[psutil.Process]:
    """SIGSTOP, then SIGKILL, every descendant of `root` (not `root` itself: the caller
    signals it through its pidfd), every still-running process of `known` (a tree
    snapshot from before the worker died) and their descendants.

    Pass `root=None` once the worker is reaped. Returns the processes signalled."""
    if root is not None and not alive(root):
        root = None  # already dead: its pid may be someone else's by now
    bases = [proc for proc in known if alive(proc) and (root is None or proc.pid != root.pid)]
    if root is not None:
        bases.insert(0, root)
    stopped: dict[int, psutil.Process] = {}
    for _ in range(MAX_STOP_ROUNDS):
        children = children_map(parent_map())
        fresh: dict[int, psutil.Process] = {}
        for base in bases:
            for proc in tree(base, children, stopped):
                if proc.pid not in stopped and (root is None or proc.pid != root.pid):
                    fresh[proc.pid] = proc
        if not fresh:
            break
        for proc in fresh.values():
            # psutil checks the create time first: a recycled pid is left alone.
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
        stopped.update(fresh)
    for proc in stopped.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return list(stopped.values())
