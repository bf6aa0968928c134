"""The node side of the Ray launcher: the `WorkerRelay` actor of one plugin.

It runs inside a Ray actor process on the node Ray chose, whose working dir is
the plugins folder Ray's runtime environment unpacked there, and spawns the
same `python -m worker PLUGIN_DIR` a local supervisor would, as its own child.
It never imports the plugin: plugin code runs only in that child. The actor
outlives its workers: a restart spawns the next worker from the same actor (on
the same node, with no new Ray worker process to start), and a spare worker
runs beside the current one. Each worker is named by its tag.

Frames do not ride on Ray calls: each worker gets a channel of its own, a TCP
connection from the supervisor to a port the relay opens for it on the node's
address (see channel.py). `spawn()` is given a one-time token through Ray (an
authenticated call) and returns the port; the first connection that presents
the token is the worker's, and the relay stops listening. Then bytes go both
ways untouched, each way on a thread of its own: the supervisor's into the
worker's stdin; the worker's stdout and stderr, its tree's usage and its exit
back as events. A call thus costs one TCP round trip plus the local pipe
round trip, where an actor call would cost a Ray task each way.

The actor is a threaded one (Ray runs its calls on a pool of threads): a call
that waits (`wait_exit`) never holds up a signal or a kill. Node-local
mechanics (process group, tagged strays, the tree's usage) reuse the local
supervisor's code (`supervisor.process`, `supervisor.containment`), so a worker
on Ray is contained the way a local one is.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import queue
import random
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil

from supervisor import containment, process
from supervisor.launchers import channel

PIPE_DRAIN_TIMEOUT = 0.1  # after the exit, how long the last bytes may take to arrive
STRAY_KILL_TIMEOUT = 1.0
TOKEN_TIMEOUT = 5.0       # a connection must present its token this fast, or it is dropped
READ_CHUNK = 1 << 16
STDIN_CHUNK = 1 << 18
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


def listen_on(host: str, ports: tuple[int, int] | None) -> socket.socket:
    """A listening socket on this node's address (the one Ray knows it by): on a free port
    of `ports` (first, last), tried in a random order, or any free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if ports is None:
        return socket.create_server((host, 0), family=family, backlog=8)
    candidates = list(range(ports[0], ports[1] + 1))
    random.shuffle(candidates)  # relays starting together rarely try the same port twice
    for port in candidates:
        try:
            return socket.create_server((host, port), family=family, backlog=8)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free port in {ports[0]}-{ports[1]} on {host} for a worker's channel (RayLauncher channel_ports)")


class _RelayedWorker:
    """One worker process and its threads: output pumps, its stdin feed, its exit, its usage."""

    def __init__(self, tag: str, token: bytes, listener: socket.socket, watch_interval: float, memory_limit: int | None) -> None:
        self.tag = tag
        self._token = token
        self._listener: socket.socket | None = listener
        self._watch_interval = watch_interval
        self._memory_limit = memory_limit
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()  # one event at a time on the channel
        self._connected = threading.Event()  # the supervisor is here, or never will be (cleaned up)
        self._cleaned = threading.Event()
        self._stdin: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()  # for the writer thread
        self._write_lock = threading.Lock()
        self._queued = 0             # chunks handed to the writer thread and not yet written
        self._stdin_fd: int | None = None  # non-blocking: the channel's reader never blocks on it
        self._stdin_closing = False
        self._known: dict[int, psutil.Process] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.exited = threading.Event()

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
        os.set_blocking(proc.stdin.fileno(), False)
        self._stdin_fd = proc.stdin.fileno()
        _thread(self._write_stdin, proc.stdin)
        _thread(self._accept)
        pumps = [
            _thread(self._pump, proc.stdout, channel.OUT, channel.OUT_EOF),
            _thread(self._pump, proc.stderr, channel.ERR, channel.ERR_EOF),
        ]
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
        self._close_stdin()
        self._connected.wait()  # the exit is told on the channel (or to nobody, once cleaned up)
        deadline = time.monotonic() + PIPE_DRAIN_TIMEOUT
        for pump in pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        self._send(channel.message(channel.EXIT, returncode))
        with self._send_lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.shutdown(socket.SHUT_WR)

    # -- the channel -----------------------------------------------------------------
    def _accept(self) -> None:
        """Take connections until one presents the token (each checked on a thread of its own,
        so one that says nothing holds up no other)."""
        listener = self._listener
        assert listener is not None
        while not self._connected.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the worker's channel is open, or it was cleaned up
            _thread(self._admit, conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(TOKEN_TIMEOUT)
            presented = b""
            while len(presented) < channel.TOKEN_SIZE and (more := conn.recv(channel.TOKEN_SIZE - len(presented))):
                presented += more
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            conn.close()
            return
        with self._send_lock:
            if not hmac.compare_digest(presented, self._token) or self._connected.is_set():
                conn.close()
                return
            self._conn = conn
            self._connected.set()
            self._close_listener()
        self._read_channel(conn)

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            self._listener.close()
            self._listener = None

    def _read_channel(self, conn: socket.socket) -> None:
        """The supervisor's messages, in order: stdin bytes, its end, signals."""
        decoder = channel.Decoder({channel.IN: self._to_stdin}, {channel.IN_EOF: self._close_stdin, channel.SIGNAL: self.signal})
        try:
            while data := conn.recv(STDIN_CHUNK):
                decoder.feed(data)
        except (OSError, channel.ChannelError):
            pass  # the connection broke: the supervisor ends this worker
        finally:
            self._close_stdin()
        # The events may still flow the other way; the socket is closed here, by the thread
        # that reads it, once cleaned up (a close under a blocked recv could reuse its fd).
        self._cleaned.wait()
        conn.close()

    def _to_stdin(self, data: bytes) -> None:
        """Written at once when the pipe takes it and nothing is queued before it (no thread
        hand-off for a call's frame); the rest queues for the writer thread, in order."""
        with self._write_lock:
            if self._stdin_closing:
                return
            if not self._queued and self._stdin_fd is not None:
                try:
                    written = os.write(self._stdin_fd, data)
                except BlockingIOError:
                    written = 0
                except OSError:
                    return  # the worker is gone: its exit is told by run()
                if written == len(data):
                    return
                data = data[written:]
            self._queued += 1
            self._stdin.put(data)

    def _close_stdin(self) -> None:
        with self._write_lock:
            if not self._stdin_closing:
                self._stdin_closing = True
                self._stdin.put(None)  # after what is queued: then the worker sees EOF

    def _write_stdin(self, stdin: IO[bytes]) -> None:
        # What the pipe could not take at once, in order, on a thread of its own: a worker
        # that stops reading (frozen, hung) blocks this thread only, never a signal.
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
            pass  # the worker is gone: its exit is told by run()
        finally:
            with self._write_lock:
                self._stdin_fd = None  # never written again: the number may be reused
            with contextlib.suppress(OSError):
                stdin.close()

    def _send(self, data: bytes) -> None:
        """One event to the supervisor, whole; dropped once nobody listens."""
        with self._send_lock:
            if self._conn is None:
                return
            try:
                self._conn.sendall(data)
            except OSError:
                self._drop_channel()  # the supervisor went: it ends this worker (the actor with it)

    def _drop_channel(self) -> None:
        """No more events; the feed of stdin wakes and ends (it closes the socket). Under the send lock."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn = None

    def _pump(self, stream: IO[bytes], kind: int, eof: int) -> None:
        fd = stream.fileno()
        try:
            while data := os.read(fd, READ_CHUNK):
                self._connected.wait()  # the pipe holds what comes before the supervisor is here
                self._send(channel.stream_header(kind, len(data)) + data)
        except OSError:
            pass
        finally:
            stream.close()
            self._connected.wait()
            self._send(channel.message(eof))

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
            if self._connected.is_set():
                self._send(channel.message(channel.USAGE, usage.rss, usage.cpu_time, usage.count))

    # -- called by the actor's methods ---------------------------------------------------
    def signal(self, sig: int) -> None:
        if self.proc is not None and not self.exited.is_set():
            with contextlib.suppress(OSError, ValueError):  # not a signal: nothing to send
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
        """After the exit: kill what is left of the tree (strays that left the group); how many.
        The channel closes: whoever still waits for the supervisor stops waiting."""
        strays = containment.kill_descendants(None, list(self._known.values())) + process.kill_tagged(self.tag)
        psutil.wait_procs(strays, timeout=STRAY_KILL_TIMEOUT)
        with self._send_lock:
            self._close_listener()
            self._drop_channel()
            self._connected.set()
        self._cleaned.set()
        return len(strays)


def _thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


class WorkerRelay:
    """One plugin's workers on this node. Methods are called by the supervisor's RayWorker."""

    def __init__(self, folder_name: str, watch_interval: float, memory_limit: int | None, channel_ports: tuple[int, int] | None = None) -> None:
        self._folder_name = folder_name
        self._watch_interval = watch_interval
        self._memory_limit = memory_limit
        self._channel_ports = channel_ports
        self._node_address: tuple[str, str] | None = None
        self._workers: dict[str, _RelayedWorker] = {}
        self._lock = threading.Lock()

    def spawn(self, worker_args: list[str], env_allow: list[str], tag: str, token: bytes) -> dict[str, Any]:
        """Start a worker in its plugin's folder on this node, its channel listening for the
        connection that presents `token`. Returns where it runs and the channel's port."""
        folder = Path.cwd() / self._folder_name  # the job's working dir is the plugins folder
        if not (folder / "plugin.toml").is_file():
            raise FileNotFoundError(f"{folder}/plugin.toml is not on this node (was the plugin folder added after the supervisor joined the cluster?)")
        if len(token) != channel.TOKEN_SIZE:
            raise ValueError(f"a channel token is {channel.TOKEN_SIZE} bytes, got {len(token)}")
        env = process.worker_env(env_allow)
        # The devices Ray gave this actor are the worker's: without these, a plugin that
        # asked for one GPU would see every GPU of the node.
        env.update({name: os.environ[name] for name in ACCELERATOR_VARIABLES if name in os.environ})
        env[process.TAG_VARIABLE] = tag
        node_id, node_ip = self._node()
        listener = listen_on(node_ip, self._channel_ports)
        worker = _RelayedWorker(tag, token, listener, self._watch_interval, self._memory_limit)
        started, failed = threading.Event(), list[BaseException]()
        command = process.command_for(folder, os.getpid(), worker_args)
        _thread(worker.run, command, folder, env, started, failed)
        started.wait()
        if failed:
            listener.close()
            raise failed[0]
        assert worker.proc is not None
        with self._lock:
            self._workers[tag] = worker
        return {"pid": worker.proc.pid, "node_id": node_id, "node_ip": node_ip, "port": listener.getsockname()[1]}

    def _node(self) -> tuple[str, str]:
        """This node's id and the address the cluster knows it by (its raylet's), looked up once:
        an actor lives on one node. Ray's get_node_ip_address() in an actor guesses from the routes."""
        if self._node_address is None:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
            found = [node for node in ray.nodes() if node["NodeID"] == node_id]  # type: ignore[no-untyped-call]
            if not found:
                raise RuntimeError(f"this node ({node_id}) is not in the cluster's list of nodes")
            self._node_address = (node_id, str(found[0]["NodeManagerAddress"]))
        return self._node_address

    def _worker(self, tag: str) -> _RelayedWorker | None:
        with self._lock:
            return self._workers.get(tag)

    def wait_exit(self, tag: str) -> None:
        """Returns once the worker has exited (at once if it is unknown here). The supervisor keeps
        one of these waiting: if it fails instead, the actor died (or its node was lost)."""
        worker = self._worker(tag)
        if worker is not None:
            worker.exited.wait()

    def kill_tree(self, tag: str) -> None:
        worker = self._worker(tag)
        if worker is not None:
            worker.kill_tree()

    def cleanup(self, tag: str) -> int:
        with self._lock:
            worker = self._workers.pop(tag, None)
        return worker.cleanup() if worker is not None else 0
