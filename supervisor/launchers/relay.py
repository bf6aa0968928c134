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
import selectors
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
TOKEN_TIMEOUT = 5.0       # a connection must present its whole token this fast, or it is dropped
MAX_PENDING_ADMISSIONS = 16  # connections whose token is still awaited; a new one pushes out the oldest
LISTEN_BACKLOG = 128
ACCEPT_RETRY = 0.1        # after a failed accept (out of fds): a pause, not synchronisation
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
        return socket.create_server((host, 0), family=family, backlog=LISTEN_BACKLOG)
    candidates = list(range(ports[0], ports[1] + 1))
    random.shuffle(candidates)  # relays starting together rarely try the same port twice
    for port in candidates:
        try:
            return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
    raise OSError(errno.EADDRINUSE, f"no free port in {ports[0]}-{ports[1]} on {host} for a worker's channel (RayLauncher channel_ports)")


class _RelayedWorker:
    """One worker process and its threads: output pumps, its channel, its stdin, its exit, its usage.

    Who closes what (a socket closed under a thread blocked on it could have its fd number
    reused by another): the accept thread closes the listener, the channel's reader thread
    closes the connection once cleaned up and no send is under way; everyone else only
    shuts them down, which wakes whoever waits on them."""

    def __init__(self, tag: str, token: bytes, listener: socket.socket, watch_interval: float, memory_limit: int | None) -> None:
        self.tag = tag
        self._token = token
        self._listener = listener
        self._listening = True
        self._listener_lock = threading.Lock()
        self._wake_reader, self._wake_writer = socket.socketpair()  # wakes the accept thread to stop
        self._watch_interval = watch_interval
        self._memory_limit = memory_limit
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()   # one message at a time on the channel
        self._connected = threading.Event()  # the supervisor is here, or never will be (cleaned up)
        self._cleaned = threading.Event()
        self._stdin: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()  # for the writer thread
        self._write_lock = threading.Lock()
        self._queued = 0             # chunks handed to the writer thread and not yet written
        self._stdin_fd: int | None = None  # non-blocking: the channel's reader never blocks on it
        self._stdin_closing = False
        self._signal_lock = threading.Lock()
        self._reaped = False         # from then on its pid may be reused: no more signals
        self._known: dict[int, psutil.Process] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._process: psutil.Process | None = None  # the same, bound before any reap (psutil checks its identity)
        self.exited = threading.Event()
        self._channel_lock = threading.Lock()  # admission against cleanup; never held during a send
        self._closing = False        # cleaned up: no connection is admitted any more
        self._accepting = False      # the accept thread runs (and owns the listener)

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
        drained = {channel.OUT: threading.Event(), channel.ERR: threading.Event()}
        try:
            self._process = psutil.Process(proc.pid)  # now, while it cannot have been reaped
            os.set_blocking(proc.stdin.fileno(), False)
            self._stdin_fd = proc.stdin.fileno()
            _thread(self._write_stdin, proc.stdin)
            _thread(self._accept)
            self._accepting = True
            pumps = {
                channel.OUT: _thread(self._pump, proc.stdout, channel.OUT, channel.OUT_EOF, drained[channel.OUT]),
                channel.ERR: _thread(self._pump, proc.stderr, channel.ERR, channel.ERR_EOF, drained[channel.ERR]),
            }
            if self._watch_interval > 0:
                _thread(self._watch)
        except BaseException as exc:  # no thread to be had, or the like: no worker either
            process.signal_group(proc.pid, None, signal.SIGKILL)
            proc.wait()
            failed.append(exc)
            started.set()
            return
        started.set()
        # Seen exited, not reaped: the group id is still ours until then.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        process.signal_group(proc.pid, None, signal.SIGKILL)  # what is left in its group
        with self._signal_lock:
            self._reaped = True
        returncode = proc.wait()
        self.exited.set()
        with self._write_lock:
            self._stdin_fd = None
        self._close_stdin()
        self._connected.wait()  # the exit is told on the channel (or to nobody, once cleaned up)
        # Everything the worker wrote goes before its exit: a pipe that reached its end
        # within the drain time has all its bytes sent first (however long the sending
        # takes); one a stray child holds open is not waited for.
        deadline = time.monotonic() + PIPE_DRAIN_TIMEOUT
        for kind, pump in pumps.items():
            if drained[kind].wait(max(0.0, deadline - time.monotonic())):
                pump.join()
        self._send(channel.message(channel.EXIT, returncode))
        with self._send_lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.shutdown(socket.SHUT_WR)

    # -- the channel -----------------------------------------------------------------
    def _accept(self) -> None:
        """Take connections until one presents the token, then read it (this thread becomes
        the channel's reader). Connections wait for their token side by side, each for
        TOKEN_TIMEOUT at most, at most MAX_PENDING_ADMISSIONS at once (a new one pushes out the
        oldest): connections that say nothing, or say it slowly, cannot keep the right one out."""
        listener = self._listener
        pending: dict[socket.socket, tuple[float, bytearray]] = {}  # in the order they came
        admitted: socket.socket | None = None
        listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            try:
                while self._listening and admitted is None:
                    now = time.monotonic()
                    for conn in [conn for conn, (deadline, _) in pending.items() if deadline <= now]:
                        _forget(selector, pending, conn)
                    wait = min((deadline for deadline, _ in pending.values()), default=now + 3600) - now
                    for key, _ in selector.select(max(0.0, wait)):
                        if key.fileobj is listener:
                            self._take(listener, selector, pending)
                        elif key.fileobj is not self._wake_reader and key.fileobj in pending:
                            conn = key.fileobj
                            assert isinstance(conn, socket.socket)
                            verdict = self._read_token(conn, pending[conn][1])
                            if verdict is True:
                                admitted = conn
                                del pending[conn]
                                selector.unregister(conn)
                                break
                            if verdict is False:
                                _forget(selector, pending, conn)  # a wrong token, or none before it closed
            finally:
                for conn in list(pending):
                    _forget(selector, pending, conn)
                with self._listener_lock:
                    self._listening = False
                    listener.close()
                    self._wake_reader.close()
                    self._wake_writer.close()
        if admitted is not None and self._open_channel(admitted):
            self._read_channel(admitted)

    def _take(self, listener: socket.socket, selector: selectors.BaseSelector, pending: dict[socket.socket, tuple[float, bytearray]]) -> None:
        """Every connection waiting in the backlog (one per wake-up would let a flood fill it)."""
        for _ in range(LISTEN_BACKLOG):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return  # none left
            except OSError:
                if self._listening:  # out of fds, or the like: a moment for some to free up
                    self._cleaned.wait(ACCEPT_RETRY)
                return
            conn.setblocking(False)
            if len(pending) >= MAX_PENDING_ADMISSIONS:
                _forget(selector, pending, next(iter(pending)))  # the oldest
            pending[conn] = (time.monotonic() + TOKEN_TIMEOUT, bytearray())
            selector.register(conn, selectors.EVENT_READ)

    def _read_token(self, conn: socket.socket, presented: bytearray) -> bool | None:
        """Read what the connection sent of its token: True when it is whole and right, False
        when wrong (or closed before it was whole), None while more is to come."""
        try:
            more = conn.recv(channel.TOKEN_SIZE - len(presented))  # never past the token: the rest is the channel's
        except BlockingIOError:
            return None
        except OSError:
            return False
        if not more:
            return False
        presented += more
        if len(presented) < channel.TOKEN_SIZE:
            return None
        return hmac.compare_digest(bytes(presented), self._token)

    def _open_channel(self, conn: socket.socket) -> bool:
        """The admitted connection becomes the channel: ADMITTED first, then the events."""
        try:
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel.keep_alive(conn)
            with self._send_lock:
                conn.sendall(channel.message(channel.ADMITTED))  # before any event: the supervisor waits for it
                with self._channel_lock:
                    if self._closing:
                        raise ConnectionAbortedError("cleaned up while it was admitted")
                    self._conn = conn
                    self._connected.set()
        except OSError:
            conn.close()
            return False
        return True

    def _stop_listening(self) -> None:
        with self._listener_lock:
            if self._listening:
                self._listening = False
                with contextlib.suppress(OSError):
                    self._wake_writer.send(b"\0")  # the accept thread wakes, and closes the listener

    def _read_channel(self, conn: socket.socket) -> None:
        """The supervisor's messages, in order: stdin bytes, its end, signals."""
        decoder = channel.Decoder({channel.IN: self._to_stdin}, {channel.IN_EOF: self._close_stdin, channel.SIGNAL: self.signal})
        try:
            while data := conn.recv(STDIN_CHUNK):
                decoder.feed(data)
        except Exception:  # the connection broke, or is not ours: the supervisor ends this worker
            pass
        finally:
            self._close_stdin()
        # The events may still flow the other way: the socket is closed once cleaned up,
        # and with no send under way on it.
        self._cleaned.wait()
        with self._send_lock:
            conn.close()

    def _drop_channel(self) -> None:
        """No more events: shut the connection down (it wakes a blocked send or receive); the
        reader thread closes it. Not under the send lock: a send blocked on a stalled peer cannot stop it."""
        with self._channel_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _send(self, data: bytes) -> None:
        """One message to the supervisor, whole; dropped once nobody listens."""
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return
            try:
                conn.sendall(data)
            except OSError:
                self._drop_channel()  # the supervisor went: it ends this worker (the actor with it)

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
        writable = select.poll()
        writable.register(fd, select.POLLOUT)
        try:
            while (data := self._stdin.get()) is not None:
                view = memoryview(data)
                while view:
                    writable.poll()  # writable, or the worker is gone (then the write fails)
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

    def _pump(self, stream: IO[bytes], kind: int, eof: int, drained: threading.Event) -> None:
        fd = stream.fileno()
        try:
            while data := os.read(fd, READ_CHUNK):
                self._connected.wait()  # the pipe holds what comes before the supervisor is here
                self._send(channel.stream_header(kind, len(data)) + data)
        except OSError:
            pass
        finally:
            drained.set()
            stream.close()
            self._connected.wait()
            self._send(channel.message(eof))

    def _watch(self) -> None:
        target = self._process
        assert target is not None
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

    # -- called by the actor's methods, and by the channel (signals) ----------------------
    def signal(self, sig: int) -> None:
        with self._signal_lock:  # never after the reap: the pid, and its group's id, may be reused then
            if self.proc is not None and not self._reaped:
                with contextlib.suppress(OSError, ValueError):  # not a signal: nothing to send
                    process.signal_group(self.proc.pid, None, sig)

    def kill_tree(self) -> None:
        if self.proc is None or self.exited.is_set():
            return
        self.signal(signal.SIGSTOP)  # nothing below it can slip out while we look
        try:
            assert self._process is not None
            containment.kill_descendants(self._process, list(self._known.values()))
        except psutil.Error:
            pass
        finally:
            self.signal(signal.SIGKILL)

    def cleanup(self) -> int:
        """After the exit: kill what is left of the tree (strays that left the group); how many.
        The channel goes: whoever still waits for the supervisor stops waiting."""
        strays = containment.kill_descendants(None, list(self._known.values())) + process.kill_tagged(self.tag)
        psutil.wait_procs(strays, timeout=STRAY_KILL_TIMEOUT)
        with self._channel_lock:
            self._closing = True
        self._stop_listening()
        self._drop_channel()
        self._connected.set()
        self._cleaned.set()
        return len(strays)

    def discard(self) -> None:
        """Its spawn failed: its sockets go (closed by the accept thread if it started)."""
        if self._accepting:
            self._stop_listening()
        else:
            for sock in (self._listener, self._wake_reader, self._wake_writer):
                sock.close()


def _forget(selector: selectors.BaseSelector, pending: dict[socket.socket, tuple[float, bytearray]], conn: socket.socket) -> None:
    selector.unregister(conn)
    del pending[conn]
    conn.close()


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
        self._abandoned: set[str] = set()  # tags cleaned up before their spawn was done
        self._lock = threading.Lock()

    def spawn(self, worker_args: list[str], env_allow: list[str], tag: str, token: bytes) -> dict[str, Any]:
        """Start a worker in its plugin's folder on this node, its channel listening for the
        connection that presents `token`. Returns where it runs and the channel's port."""
        try:
            folder = Path.cwd() / self._folder_name  # the job's working dir is the plugins folder
        except FileNotFoundError:
            raise FileNotFoundError("this actor's working dir (the plugins folder Ray unpacked on its node) was deleted") from None
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
        command = process.command_for(folder, os.getpid(), worker_args)
        listener = listen_on(node_ip, self._channel_ports)
        worker = _RelayedWorker(tag, token, listener, self._watch_interval, self._memory_limit)
        started, failed = threading.Event(), list[BaseException]()
        try:
            _thread(worker.run, command, folder, env, started, failed)
        except BaseException:
            worker.discard()
            raise
        started.wait()
        if failed:
            worker.discard()
            raise failed[0]
        assert worker.proc is not None
        with self._lock:
            abandoned = tag in self._abandoned  # the supervisor gave up on this launch while it ran
            self._abandoned.discard(tag)
            if not abandoned:
                self._workers[tag] = worker
        if abandoned:
            worker.kill_tree()
            worker.cleanup()
            raise RuntimeError(f"the launch of worker {tag} was abandoned while it ran")
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
        """The worker's end, after its exit; for a launch the supervisor gave up on, a spawn
        still under way kills what it started."""
        with self._lock:
            worker = self._workers.pop(tag, None)
            if worker is None:
                self._abandoned.add(tag)
        return worker.cleanup() if worker is not None else 0
