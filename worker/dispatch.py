"""One call in, one result out: bind arguments, run the entry, shape the result.

Async entries run as tasks on the worker's event loop; sync entries run on a
bounded thread pool (`worker/pool.py`) and write their own result frame from
the pool thread (the writer is thread-safe), so a result does not wait for the loop.

Exactly one `Result` is written per `Call`, whatever happens: the entry
returns, raises, is cancelled before it starts, or produces a value msgpack
cannot encode (reported as `unserializable`, naming the type; the worker
stays up).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import signal
import threading
import traceback
from typing import Any

from protocol import Call, ErrorInfo, ProtocolError, Result, encode_message
from protocol.streams import BlockingWriter
from worker.confine import die_of_exhaustion, die_of_memory_error, is_memory_error
from worker.loader import Entry
from worker.pool import EntryThreads
from worker.sdk import Err, Ok


def error_from_exception(kind: str, exc: BaseException) -> ErrorInfo:
    """Describe an exception for the wire; never raises, whatever the exception's __str__ does."""
    try:
        message = str(exc)
    except Exception as str_error:
        if is_memory_error(str_error):
            die_of_memory_error()
        message = f"<unprintable {type(exc).__name__}: str() raised {type(str_error).__name__}>"
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception:
        trace = ""
    return ErrorInfo(kind=kind, type=type(exc).__name__, message=message, traceback=trace)


def find_unencodable(value: Any, path: str = "result", _seen: frozenset[int] = frozenset()) -> tuple[str, str] | None:
    """(path, type name) of the first value msgpack cannot encode, if any."""
    if id(value) in _seen:
        return path, f"{type(value).__name__} (a reference cycle)"
    if value is None or isinstance(value, bool | int | float | str | bytes | bytearray | memoryview):
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            return path, "int (out of the 64-bit range)"
        return None
    if isinstance(value, list | tuple | dict):
        _seen = _seen | {id(value)}
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{index}]", _seen)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_unencodable(key, f"{path} key {key!r}", _seen) or find_unencodable(item, f"{path}[{key!r}]", _seen)
            if found:
                return found
        return None
    return path, type(value).__name__


class Dispatcher:
    def __init__(
        self,
        entries: dict[str, Entry],
        writer: BlockingWriter,
        loop: asyncio.AbstractEventLoop,
        max_concurrency: int,
    ) -> None:
        self.entries = entries
        self.writer = writer
        self.loop = loop
        self.pool = EntryThreads(max_concurrency, loop, self._forget_all, self._escaped)
        # call_id -> asyncio.Task (async entry) or None (sync entry, on the pool)
        self.in_flight: dict[int, asyncio.Task[None] | None] = {}
        self._idle = asyncio.Event()
        self._shutting_down = False
        self._idle.set()

    # -- the loop thread -------------------------------------------------
    def start(self, call: Call) -> None:
        entry = self.entries.get(call.entry_id)
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none"
            self.send_error(call.call_id, error=ErrorInfo("entry_not_found", "EntryNotFound", f"no entry {call.entry_id!r} (entries: {known})"))
            return
        if not entry.arguments_fit(call.args):
            try:
                entry.signature.bind(**call.args)
                problem = "the arguments do not fit the entry's signature"
            except TypeError as exc:
                problem = str(exc)
            self.send_error(call.call_id, error=ErrorInfo("invalid_arguments", "InvalidArguments", problem))
            return
        self._idle.clear()
        if entry.is_async:
            task = self.loop.create_task(self._run_async(entry, call))
            self.in_flight[call.call_id] = task
            task.add_done_callback(functools.partial(self._async_done, call.call_id))
        else:
            self.in_flight[call.call_id] = None
            try:
                self.pool.submit(call.call_id, functools.partial(self._run_sync, entry, call))
            except RuntimeError as exc:
                # No thread could be started (the memory backstop counts every
                # stack, or a process limit). The call already sits in the pool's
                # queue, so it cannot be answered here without risking two
                # answers: this worker is out of resources and must go.
                die_of_exhaustion(f"cannot start a thread for call {call.call_id}: {exc}")

    def cancel(self, call_id: int) -> None:
        if call_id not in self.in_flight:
            return  # already finished; its result is on the wire
        work = self.in_flight[call_id]
        if work is not None:
            work.cancel()
        elif self.pool.cancel(call_id):
            # Cancelled before a pool thread picked it up: nobody else will answer.
            self.send_error(call_id, error=ErrorInfo("cancelled", "Cancelled", "cancelled before it started"))
            self._forget(call_id)
        # A sync entry already running cannot be interrupted; the supervisor
        # kills the worker if it does not finish within its grace period.

    def cancel_all(self) -> None:
        """Cancel every call in flight that can be cancelled (each still gets its answer):
        the worker is shutting down."""
        self._shutting_down = True
        for call_id in list(self.in_flight):
            self.cancel(call_id)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def _escaped(self, exc: BaseException) -> None:
        # Runs on the pool thread. _run_sync answers every error of the entry; one
        # that escaped it came from sending the answer (e.g. out of memory encoding it).
        if is_memory_error(exc):
            die_of_memory_error()

    def _forget(self, call_id: int) -> None:
        self.in_flight.pop(call_id, None)
        if not self.in_flight:
            self._idle.set()

    def _forget_all(self, call_ids: list[int]) -> None:
        for call_id in call_ids:
            self.in_flight.pop(call_id, None)
        if not self.in_flight:
            self._idle.set()

    async def _run_async(self, entry: Entry, call: Call) -> None:
        self_kill = _SelfKill.arm(call)  # starting its thread may fail: the worker is out of resources and exits
        try:
            value = await entry.func(**call.args)
        except asyncio.CancelledError:
            raise  # reported by _async_done
        except BaseException as exc:  # SystemExit from an entry is its failure, not the worker's end
            if is_memory_error(exc):
                die_of_memory_error()
            if self_kill is not None:
                await self_kill.wait_for_death_async()
            self.send_error(call.call_id, error=error_from_exception("failed", exc))
        else:
            if self_kill is not None:
                await self_kill.wait_for_death_async()
            self._send_value(call.call_id, value)

    def _async_done(self, call_id: int, task: asyncio.Task[None]) -> None:
        # A cancel that lands before the task's first step never enters
        # _run_async's body, so the answer for a cancelled task is sent here.
        if task.cancelled():
            why = "the worker is shutting down" if self._shutting_down else "cancelled by the caller"
            self.send_error(call_id, error=ErrorInfo("cancelled", "Cancelled", why))
        elif is_memory_error(task.exception()):
            die_of_memory_error()  # from sending the answer; the entry's own errors are answered in _run_async
        self._forget(call_id)

    # -- pool threads ----------------------------------------------------
    def _run_sync(self, entry: Entry, call: Call) -> None:
        self_kill = _SelfKill.arm(call)
        try:
            value = entry.func(**call.args)
            if inspect.isawaitable(value):
                # A sync-looking wrapper around an async function: finish it on the loop.
                value = asyncio.run_coroutine_threadsafe(_await(value), self.loop).result()
        except BaseException as exc:  # SystemExit from an entry is its failure, not the worker's end
            if is_memory_error(exc):
                die_of_memory_error()
            if self_kill is not None:
                self_kill.wait_for_death()
            self.send_error(call.call_id, error=error_from_exception("failed", exc))
        else:
            if self_kill is not None:
                self_kill.wait_for_death()
            self._send_value(call.call_id, value)

    # -- any thread ------------------------------------------------------
    def _send_value(self, call_id: int, value: Any) -> None:
        if isinstance(value, Err):
            self.send_error(call_id, error=ErrorInfo("failed", value.type_name, value.message, _traceback_of(value.error)))
            return
        if isinstance(value, Ok):
            value = value.value
        try:
            data = encode_message(Result(call_id, True, value), self.writer.max_frame_size)
        except (TypeError, ValueError, OverflowError) as exc:
            try:
                where = find_unencodable(value)
            except RecursionError:  # nested deeper than Python's stack
                where = None
            what = f"{where[0]} is of type {where[1]!r}" if where else str(exc)
            self.send_error(call_id, error=ErrorInfo("unserializable", "ResultNotSerializable", f"the result cannot be encoded: {what}"))
            return
        except ProtocolError as exc:
            self.send_error(call_id, error=ErrorInfo("unserializable", "ResultTooLarge", str(exc)))
            return
        self.writer.write_frame(data)

    def send_error(self, call_id: int, *, error: ErrorInfo) -> None:
        try:
            data = encode_message(Result(call_id, False, None, error), self.writer.max_frame_size)
        except (TypeError, ValueError, ProtocolError):
            # A message with lone surrogates, or a traceback over the frame limit:
            # the caller still gets an answer, in text that always encodes.
            safe = ErrorInfo(error.kind, _safe_text(error.type), _safe_text(error.message)[:65536], _safe_text(error.traceback)[-65536:])
            data = encode_message(Result(call_id, False, None, safe), self.writer.max_frame_size)
        self.writer.write_frame(data)


class _SelfKill:
    """The chaos fault "kill_in_entry": this worker SIGKILLs itself a moment after
    the entry starts (or as soon as it ends, if sooner), and the call's answer never
    leaves: whoever reaches the answer first waits for the kill."""

    INSIDE = 0.01  # seconds into the entry

    def __init__(self) -> None:
        self._entry_done = threading.Event()
        threading.Thread(target=self._kill, name="neko-chaos-kill", daemon=True).start()

    @classmethod
    def arm(cls, call: Call) -> _SelfKill | None:
        if call.fault != "kill_in_entry":
            return None
        try:
            return cls()
        except RuntimeError as exc:  # no thread: the call could never be answered
            die_of_exhaustion(f"cannot start the chaos thread for call {call.call_id}: {exc}")

    def _kill(self) -> None:
        self._entry_done.wait(self.INSIDE)
        os.kill(os.getpid(), signal.SIGKILL)

    def wait_for_death(self) -> None:
        self._entry_done.set()
        threading.Event().wait()  # SIGKILL ends this

    async def wait_for_death_async(self) -> None:
        self._entry_done.set()
        await asyncio.Event().wait()  # SIGKILL ends this


def _safe_text(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _traceback_of(error: str | BaseException) -> str:
    if isinstance(error, BaseException) and error.__traceback__ is not None:
        return "".join(traceback.format_exception(error))
    return ""
