"""The worker's life: hello, load, start, serve calls, shut down.

    hello --> load plugin --> startup hooks --> ready --> serve --+--> shutdown hooks --> exit 0
                  |                 |                             |   (on `shutdown`, or stdin EOF:
                  +-----------------+--> fatal(traceback), exit 3 |    the supervisor is gone)

The event loop runs on the main thread, so sync startup and shutdown hooks run
on the main thread too (they may install signal handlers). The worker ends
with `os._exit`: a sync entry stuck in a pool thread must not keep a dead
session alive through the interpreter's thread joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import (
    PROTOCOL_VERSION,
    Activate,
    Call,
    Cancel,
    ErrorInfo,
    Fatal,
    Hello,
    Log,
    Message,
    MessageDecoder,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Shutdown,
    encode_message,
)
from protocol.exits import EXIT_OK, EXIT_PROTOCOL_ERROR, EXIT_START_FAILED
from protocol.messages import EntryInfo
from protocol.streams import BlockingWriter, MessageProtocol
from worker.confine import (
    Limits,
    SandboxRefused,
    confine,
    die_of_memory_error,
    is_memory_error,
    kill_descendants,
)
from worker.dispatch import Dispatcher, error_from_exception
from worker.loader import (
    Timer,
    collect_parts,
    import_package,
    read_config,
    resolve_class,
)
from worker.sdk import PluginContext

EOF_EXIT_GRACE = 1.5  # seconds to run shutdown hooks once the supervisor is gone


class ProtocolLogHandler(logging.Handler):
    """Forwards log records to the supervisor as `log` frames."""

    def __init__(self, writer: BlockingWriter) -> None:
        super().__init__(logging.DEBUG)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self.writer.send(Log(record.levelno, record.name, text))
        except Exception:
            self.handleError(record)


def install_logging(writer: BlockingWriter) -> None:
    root = logging.getLogger()
    root.handlers[:] = [ProtocolLogHandler(writer)]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if is_memory_error(args.exc_value):
            die_of_memory_error()
        logging.getLogger("worker").error(
            "unhandled exception in thread %s", getattr(args.thread, "name", "?"),
            exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        )

    threading.excepthook = thread_hook


class TimerThread(threading.Thread):
    """Runs one timer: ticks never overlap, an exception is logged and the timer goes on."""

    def __init__(self, timer: Timer, loop: asyncio.AbstractEventLoop, stop: threading.Event, logger: logging.Logger) -> None:
        super().__init__(name=f"neko-timer-{timer.id}", daemon=True)
        self.timer, self.loop, self.stop, self.logger = timer, loop, stop, logger

    def run(self) -> None:
        while not self.stop.wait(self.timer.seconds):
            try:
                if self.timer.is_async:
                    asyncio.run_coroutine_threadsafe(self.timer.func(), self.loop).result()
                else:
                    self.timer.func()
            except Exception as exc:
                if is_memory_error(exc):
                    die_of_memory_error()
                self.logger.exception("timer %r failed; it keeps running", self.timer.id)


class Session:
    def __init__(self, plugin_dir: Path, writer: BlockingWriter, in_fd: int, max_frame_size: int) -> None:
        self.plugin_dir = plugin_dir
        self.writer = writer
        self.in_fd = in_fd
        self.max_frame_size = max_frame_size
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self.shutdown_grace = 0.0
        self.timer_stop = threading.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_log_loop_exception)
        try:
            config = read_config(self.plugin_dir)
            package = import_package(self.plugin_dir)
            cls = resolve_class(self.plugin_dir, config, package)
            logger = logging.getLogger(f"plugin.{config.plugin_id}")
            instance = cls(PluginContext(config.plugin_id, config.config_path, logger))
            parts = collect_parts(instance)
            for hook in parts.startup:
                await _run_hook(hook)
            ready = Ready(tuple(_entry_info(e) for e in parts.entries.values()))
            ready_frame = encode_message(ready, self.max_frame_size)  # too many entries for one frame: say so now
        except BaseException as exc:
            if is_memory_error(exc):
                die_of_memory_error()
            self.writer.send(Fatal(error_from_exception("start_failed", exc)))
            return EXIT_START_FAILED

        dispatcher = Dispatcher(parts.entries, self.writer, loop, config.max_concurrency)
        timers = [TimerThread(t, loop, self.timer_stop, logger) for t in parts.timers]
        for thread in timers:
            thread.start()
        await self._open_input(dispatcher)
        self.writer.write_frame(ready_frame)

        await self.stopping.wait()
        self.timer_stop.set()
        code = EXIT_PROTOCOL_ERROR if self.stop_reason == "protocol" else EXIT_OK
        if self.stop_reason in ("eof", "protocol"):
            # The supervisor is gone, or what it sends cannot be read: no result
            # can be trusted to arrive. Give the shutdown hooks a bounded moment, then leave.
            _exit_after(EOF_EXIT_GRACE, code)
        else:
            # Calls in flight may finish within the grace; then async ones are
            # cancelled (sync ones cannot be) and the hooks run regardless.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.shutdown_grace):
                    await dispatcher.wait_idle()
            dispatcher.cancel_all()
        for hook in parts.shutdown:
            try:
                await _run_hook(hook)
            except Exception:
                logger.exception("shutdown hook %s failed", getattr(hook, "__name__", hook))
        return code

    async def _open_input(self, dispatcher: Dispatcher) -> None:
        loop = asyncio.get_running_loop()

        def on_message(message: Message) -> None:
            if isinstance(message, Call):
                if self.stopping.is_set():
                    dispatcher.send_error(message.call_id, error=ErrorInfo("cancelled", "ShuttingDown", "the worker is shutting down"))
                else:
                    dispatcher.start(message)
            elif isinstance(message, Cancel):
                dispatcher.cancel(message.call_id)
            elif isinstance(message, Ping):
                self.writer.send(Pong(message.nonce))
            elif isinstance(message, Shutdown):
                self.shutdown_grace = message.grace
                self._stop("shutdown")
            # pong and anything a supervisor has no business sending are ignored

        def on_close(error: BaseException | None) -> None:
            if error is not None:
                logging.getLogger("worker").error("protocol input broke: %s", error)
            self._stop("protocol" if error is not None else "eof")

        pipe = os.fdopen(self.in_fd, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: MessageProtocol(on_message, on_close, self.max_frame_size), pipe)

    def _stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.stopping.set()


async def _run_hook(hook: Callable[..., Any]) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result


def _entry_info(entry: Any) -> EntryInfo:
    return EntryInfo(entry.id, entry.name, entry.description, entry.input_schema, entry.timeout, entry.is_async)


def _exit_after(seconds: float, code: int) -> None:
    timer = threading.Timer(seconds, lambda: _hard_exit(code))
    timer.daemon = True
    timer.start()


def _hard_exit(code: int) -> None:
    with contextlib.suppress(Exception):
        kill_descendants()
        sys.stderr.flush()
    os._exit(code)


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if is_memory_error(exc):
        die_of_memory_error()
    logging.getLogger("worker").error(context.get("message", "event loop error"), exc_info=exc)


def _after_fork_in_child(in_fd: int, out_fd: int) -> None:
    """A forked child (multiprocessing's default on Linux) inherits the protocol
    fds and the log handler, and must never write a frame: its output would
    interleave with the worker's. Point the fds at /dev/null (not closed: a
    reused fd number would send stray frames into some file); logging to stderr."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in (in_fd, out_fd):
            os.dup2(devnull, fd, inheritable=False)
        os.close(devnull)
    root = logging.getLogger()
    root.handlers[:] = [logging.StreamHandler(sys.stderr)]


def await_activation(in_fd: int, max_frame_size: int) -> bool:
    """A spare worker's wait: True once `activate` arrives, False on EOF. Reads that
    one frame and not a byte more (the session's reader takes the rest)."""
    first = os.read(in_fd, 1)
    if not first:
        return False  # dismissed
    rest = _read_exactly(in_fd, 3)
    if rest is None:
        raise ProtocolError("the input ended inside a frame header")
    header = first + rest
    size = int.from_bytes(header, "big")
    if size > max_frame_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_frame_size}")
    body = _read_exactly(in_fd, size)
    if body is None:
        raise ProtocolError("the input ended inside a frame")
    messages = MessageDecoder(max_frame_size).feed(header + body)
    if len(messages) != 1 or not isinstance(messages[0], Activate):
        raise ProtocolError(f"got {type(messages[0]).__name__ if messages else 'nothing'} instead")
    return True


def _read_exactly(fd: int, count: int) -> bytes | None:
    """`count` bytes from `fd`; None if it ends first (at once or part way)."""
    data = bytearray()
    while len(data) < count:
        chunk = os.read(fd, count - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def serve(plugin_dir: Path, in_fd: int, out_fd: int, max_frame_size: int, limits: Limits | None = None, standby: bool = False) -> int:
    writer = BlockingWriter(out_fd, max_frame_size)
    os.register_at_fork(after_in_child=lambda: _after_fork_in_child(in_fd, out_fd))
    refused: SandboxRefused | None = None
    try:
        protections = confine(plugin_dir, limits or Limits())
    except SandboxRefused as exc:
        refused, protections = exc, {"sandbox": {"abi": 0, "reason": str(exc)}}
    writer.send(Hello(PROTOCOL_VERSION, os.getpid(), protections))
    if refused is not None:
        writer.send(Fatal(error_from_exception("start_failed", refused)))
        return EXIT_START_FAILED
    install_logging(writer)
    if standby:
        try:
            if not await_activation(in_fd, max_frame_size):
                return EXIT_OK  # dismissed: the supervisor closed our input
        except ProtocolError as exc:
            logging.getLogger("worker").error("a spare worker expected activate: %s", exc)
            return EXIT_PROTOCOL_ERROR
    session = Session(plugin_dir, writer, in_fd, max_frame_size)
    try:
        code = asyncio.run(session.run())
    finally:
        # Whatever the plugin started dies with the worker, also on a clean exit.
        kill_descendants()
    logging.shutdown()
    return code
