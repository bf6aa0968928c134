"""The node side of the Ray launcher: the `WorkerRelay` actor of one plugin.

It runs inside a Ray actor process on the node Ray chose, whose working dir is
the plugins folder Ray's runtime environment unpacked there, and spawns the
same `python -m worker PLUGIN_DIR` a local supervisor would, as its own child.
It never imports the plugin: plugin code runs only in that child. The actor
outlives its workers: a restart spawns the next worker from the same actor (on
the same node, with no new Ray worker process to start), and a spare worker
runs beside the current one. Each worker is named by its tag.

Bytes go both ways untouched: `write(tag, seq, data)` calls reach the worker's
stdin in `seq` order, and `read(tag)`, long-polled, returns everything the
worker wrote since the last batch; a write waits a few milliseconds for the
worker's answer and brings it back itself when it comes (so a quick call costs
one actor task, not two). Batches are numbered: the supervisor puts them back
in order, whichever call brought each. A batch holds events:

    ("out", bytes)  ("err", bytes)     stdout (frames) and stderr, as read
    ("out_eof",)    ("err_eof",)       a stream ended
    ("usage", rss, cpu_time, count)    one look at the worker's tree (for its limits)
    ("exit", returncode)               the worker exited and is reaped; always last

The actor is a threaded one (Ray runs its calls on a pool of threads): an
actor call costs less than on an asyncio actor, and every blocking step (a
pipe write, a wait for output) runs on a thread of its own. Node-local
mechanics (process group, tagged strays, the tree's usage) reuse the local
supervisor's code (`supervisor.process`, `supervisor.containment`), so a worker
on Ray is contained the way a local one is.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil

from supervisor import containment, process

PIPE_DRAIN_TIMEOUT = 0.1  # after the exit, how long the last bytes may take to arrive
STRAY_KILL_TIMEOUT = 1.0
READ_CHUNK = 1 << 16

Event = tuple[Any, ...]
Batch = tuple[int | None, list[Event]]  # (its number, or None when empty; the events)
ANSWER_WAIT = 0.005  # a write waits this long for the worker's answer, to carry it back
# What Ray sets in an actor's environment for the accelerators it reserved for it.
ACCELERATOR_VARIABLES = (
    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ONEAPI_DEVICE_SELECTOR",
    "NEURON_RT_VISIBLE_CORES", "TPU_VISIBLE_CHIPS", "HABANA_VISIBLE_MODULES",
)


def kill_tagged_on_this_node(tag: str) -> int:
    """A Ray task's body, pinned to the node of an actor that died: its worker's
    descendants outlived it (the worker died of its parent's death, its children did not)."""
    found = process.kill_tagged(tag)
    psutil.wait_procs(found, timeout=STRAY_KILL_TIMEOUT)
    return len(found)


class _RelayedWorker:
    """One worker process and its threads: output pumps, a stdin writer, its exit, its usage."""

    def __init__(self, tag: str, watch_interval: float, memory_limit: int | None) -> None:
        self.tag = tag
        self._watch_interval = watch_interval
        self._memory_limit = memory_limit
        self._events: list[Event] = []
        self._changed = threading.Condition()
        self._stdin: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self._next_seq = 0
        self._early: dict[int, bytes | None] = {}  # writes that arrived ahead of their turn
        self._queued = 0  # chunks handed to the writer thread and not yet written
        self._stdin_fd: int | None = None  # non-blocking: a write never blocks an actor call
        self._known: dict[int, psutil.Process] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.exited = threading.Event()
        self.gone = False  # cleaned up: a read still waiting returns
        self._batches = 0    # the number of the next batch of events
        self._answering = 0  # writes waiting for their answer: the standing read holds back

    # -- the process's own thread ------------------------------------------------------
    def run(self, command: list[str], folder: Path, env: dict[str, str], started: threading.Event, failed: list[BaseException]) -> None:
        """Spawn the worker and wait for it, on a thread that lives exactly as long as it:
        the worker's PR_SET_PDEATHSIG fires when the thread that spawned it ends."""
        try:
            self.proc = process.spawn(folder, command, env)
        except BaseException as exc:
            failed.append(exc)
            started.set()
            return
        proc = self.proc
        assert proc.stdin and proc.stdout and proc.stderr
        pumps = [_thread(self._pump, proc.stdout, "out"), _thread(self._pump, proc.stderr, "err")]
        os.set_blocking(proc.stdin.fileno(), False)
        self._stdin_fd = proc.stdin.fileno()
        _thread(self._write_stdin, proc.stdin)
        if self._watch_interval > 0:
            _thread(self._watch)
        started.set()
        # Seen exited, not reaped: the group id is still ours until then.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        process.signal_group(proc.pid, None, signal.SIGKILL)  # what is left in its group
        returncode = proc.wait()
        self.exited.set()
        with self._write_lock:
            self._stdin_fd = None
        self._stdin.put(None)
        deadline = time.monotonic() + PIPE_DRAIN_TIMEOUT
        for pump in pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        self.push(("exit", returncode))

    def _pump(self, stream: IO[bytes], kind: str) -> None:
        fd = stream.fileno()
        try:
            while data := os.read(fd, READ_CHUNK):
                self.push((kind, data))
        except OSError:
            pass
        finally:
            stream.close()
            self.push((f"{kind}_eof",))

    def _write_stdin(self, stdin: IO[bytes]) -> None:
        # What a write could not put in the pipe at once, in order, on a thread of its
        # own: a worker that stops reading (frozen, hung) blocks this thread only.
        fd = stdin.fileno()
        try:
            while (data := self._stdin.get()) is not None:
                view = memoryview(data)
                while view:
                    select.select([], [fd], [])
                    with contextlib.suppress(BlockingIOError):
                        view = view[os.write(fd, view):]
                with self._write_lock:
                    self._queued -= 1
        except (OSError, ValueError):
            pass  # the worker is gone: its exit is reported by run()
        finally:
            with self._write_lock:
                self._stdin_fd = None
            with contextlib.suppress(OSError):
                stdin.close()

    def _watch(self) -> None:
        assert self.proc is not None
        try:
            target = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self.exited.wait(self._watch_interval):  # a sampling period, not synchronisation
            try:
                usage = containment.measure(target, containment.parent_map(), self._known, self._memory_limit)
            except (psutil.Error, OSError):
                return
            if self.exited.is_set():
                return
            self._known = {proc.pid: proc for proc in usage.processes}
            self.push(("usage", usage.rss, usage.cpu_time, usage.count))

    # -- called by the actor's methods ---------------------------------------------------
    def push(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def take(self) -> Batch:
        """For the standing read: what the worker wrote since the last batch; waits until there is
        something, and lets a write that waits for its answer have it first."""
        with self._changed:
            while (not self._events or self._answering) and not self.gone:
                self._changed.wait()
            return self._batch()

    def take_answer(self, wait: float) -> Batch:
        """For a write: the worker's answer if it comes within `wait` seconds (a quick call's
        result then rides back on the write's own reply: one actor task per call, not two)."""
        deadline = time.monotonic() + wait
        with self._changed:
            self._answering += 1
            try:
                while not self._events and not self.gone and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                return self._batch()
            finally:
                self._answering -= 1
                self._changed.notify_all()  # the standing read may take what comes next

    def _batch(self) -> Batch:
        """The events so far, numbered: the supervisor orders batches by number, whichever call
        (the read, or a write) brought each back."""
        if not self._events:
            return (None, [])
        events, self._events = self._events, []
        number, self._batches = self._batches, self._batches + 1
        return (number, events)

    def write(self, seq: int, data: bytes | None) -> None:
        """In `seq` order, whatever order Ray runs the calls in; None closes stdin. Written
        at once when the pipe takes it and nothing is queued before it (no thread hand-off
        for a call's frame); the rest queues for the writer thread."""
        with self._write_lock:
            self._early[seq] = data
            while self._next_seq in self._early:
                chunk = self._early.pop(self._next_seq)
                self._next_seq += 1
                if chunk is not None and not self._queued and self._stdin_fd is not None:
                    try:
                        written = os.write(self._stdin_fd, chunk)
                    except BlockingIOError:
                        written = 0
                    except OSError:
                        continue  # the worker is gone: its exit is reported by run()
                    if written == len(chunk):
                        continue
                    chunk = chunk[written:]
                if chunk is None:
                    self._stdin_fd = None  # closing: never write to the fd (its number may be reused)
                else:
                    self._queued += 1
                self._stdin.put(chunk)

    def signal(self, sig: int) -> None:
        if self.proc is not None and not self.exited.is_set():
            process.signal_group(self.proc.pid, None, sig)

    def kill_tree(self) -> None:
        if self.proc is None or self.exited.is_set():
            return
        self.signal(signal.SIGSTOP)  # nothing below it can slip out while we look
        try:
            containment.kill_descendants(psutil.Process(self.proc.pid), list(self._known.values()))
        except psutil.Error:
            pass
        finally:
            self.signal(signal.SIGKILL)

    def cleanup(self) -> int:
        """After the exit: kill what is left of the tree (strays that left the group); how many."""
        strays = containment.kill_descendants(None, list(self._known.values())) + process.kill_tagged(self.tag)
        psutil.wait_procs(strays, timeout=STRAY_KILL_TIMEOUT)
        with self._changed:
            self.gone = True
            self._changed.notify_all()
        return len(strays)


def _thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


class WorkerRelay:
    """One plugin's workers on this node. Methods are called by the supervisor's RayWorker."""

    def __init__(self, folder_name: str, watch_interval: float, memory_limit: int | None) -> None:
        self._folder_name = folder_name
        self._watch_interval = watch_interval
        self._memory_limit = memory_limit
        self._workers: dict[str, _RelayedWorker] = {}
        self._lock = threading.Lock()

    def spawn(self, worker_args: list[str], env_allow: list[str], tag: str) -> dict[str, Any]:
        """Start a worker in its plugin's folder on this node. Returns where it runs."""
        import ray  # only to name the node

        folder = Path.cwd() / self._folder_name  # the job's working dir is the plugins folder
        if not (folder / "plugin.toml").is_file():
            raise FileNotFoundError(f"{folder}/plugin.toml is not on this node (was the plugin folder added after the supervisor joined the cluster?)")
        env = process.worker_env(env_allow)
        # The devices Ray gave this actor are the worker's: without these, a plugin that
        # asked for one GPU would see every GPU of the node.
        env.update({name: os.environ[name] for name in ACCELERATOR_VARIABLES if name in os.environ})
        env[process.TAG_VARIABLE] = tag
        worker = _RelayedWorker(tag, self._watch_interval, self._memory_limit)
        started, failed = threading.Event(), list[BaseException]()
        command = process.command_for(folder, os.getpid(), worker_args)
        _thread(worker.run, command, folder, env, started, failed)
        started.wait()
        if failed:
            raise failed[0]
        assert worker.proc is not None
        with self._lock:
            self._workers[tag] = worker
        node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return {"pid": worker.proc.pid, "node_id": ray.get_runtime_context().get_node_id(), "node_ip": node_ip}

    def _worker(self, tag: str) -> _RelayedWorker | None:
        with self._lock:
            return self._workers.get(tag)

    def read(self, tag: str) -> Batch:
        """Everything the worker wrote since the last batch; waits until there is something."""
        worker = self._worker(tag)
        return worker.take() if worker is not None else (None, [("gone",)])

    def write(self, tag: str, seq: int, data: bytes | None) -> Batch:
        """Bytes for the worker's stdin (None: close it); returns the answer if it comes quickly."""
        worker = self._worker(tag)
        if worker is None:
            return (None, [])
        worker.write(seq, data)
        return worker.take_answer(ANSWER_WAIT) if data else (None, [])

    def send_signal(self, tag: str, sig: int) -> None:
        worker = self._worker(tag)
        if worker is not None:
            worker.signal(sig)

    def kill_tree(self, tag: str) -> None:
        worker = self._worker(tag)
        if worker is not None:
            worker.kill_tree()

    def cleanup(self, tag: str) -> int:
        with self._lock:
            worker = self._workers.pop(tag, None)
        return worker.cleanup() if worker is not None else 0
