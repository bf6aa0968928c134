"""Typed messages and their wire shapes (the table is in protocol/README.md).

Every message is a msgpack array whose first item is a short tag. Arrays (not
maps) keep frames small and decoding cheap on the hot path (call/result).
Each message class has `to_wire()`; `decode_message()` is the one way back,
and turns any wrong shape into `ProtocolError`.

The messages are frozen records (`protocol.record`): they behave as frozen,
slotted dataclasses did, without compiling their methods at every worker's start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from protocol.errors import ProtocolError
from protocol.record import Record

# 2: hello carries the protections the worker applied; 3: call may carry a fault;
# 4: activate, for a spare worker started with --standby
PROTOCOL_VERSION = 4

ERROR_KINDS = frozenset(
    {"entry_not_found", "invalid_arguments", "failed", "unserializable", "cancelled", "start_failed"}
)


_set = object.__setattr__  # how a frozen record's __init__ fills its slots


class EntryInfo(Record):
    __slots__ = ("id", "name", "description", "input_schema", "timeout", "is_async")
    id: str
    name: str
    description: str
    input_schema: Any
    timeout: float | None
    is_async: bool

    def __init__(
        self, id: str, name: str = "", description: str = "", input_schema: Any = None,
        timeout: float | None = None, is_async: bool = False,
    ) -> None:
        _set(self, "id", id)
        _set(self, "name", name)
        _set(self, "description", description)
        _set(self, "input_schema", input_schema)
        _set(self, "timeout", timeout)
        _set(self, "is_async", is_async)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "timeout": self.timeout,
            "is_async": self.is_async,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> EntryInfo:
        if not isinstance(obj, Mapping):
            raise ProtocolError(f"entry must be a map, got {type(obj).__name__}")
        timeout = obj.get("timeout")
        entry = cls(
            id=_expect(obj.get("id"), str, "entry.id"),
            name=_expect(obj.get("name", ""), str, "entry.name"),
            description=_expect(obj.get("description", ""), str, "entry.description"),
            input_schema=obj.get("input_schema"),
            timeout=None if timeout is None else float(_expect(timeout, (int, float), "entry.timeout")),
            is_async=_expect(obj.get("is_async", False), bool, "entry.is_async"),
        )
        return entry


class ErrorInfo(Record):
    __slots__ = ("kind", "type", "message", "traceback")
    kind: str
    type: str
    message: str
    traceback: str

    def __init__(self, kind: str, type: str, message: str, traceback: str = "") -> None:
        _set(self, "kind", kind)
        _set(self, "type", type)
        _set(self, "message", message)
        _set(self, "traceback", traceback)

    def to_wire(self) -> dict[str, str]:
        return {"kind": self.kind, "type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_wire(cls, obj: Any) -> ErrorInfo:
        if not isinstance(obj, Mapping):
            raise ProtocolError(f"error must be a map, got {type(obj).__name__}")
        kind = _expect(obj.get("kind"), str, "error.kind")
        if kind not in ERROR_KINDS:
            raise ProtocolError(f"unknown error kind {kind!r}")
        return cls(
            kind=kind,
            type=_expect(obj.get("type", ""), str, "error.type"),
            message=_expect(obj.get("message", ""), str, "error.message"),
            traceback=_expect(obj.get("traceback", ""), str, "error.traceback"),
        )


class Hello(Record):
    __slots__ = ("version", "pid", "protections")
    version: int
    pid: int
    # What confines this worker, as the worker itself applied it (rlimits, sandbox).
    # Plain msgpack data: the supervisor shows it in the plugin's status.
    protections: dict[str, Any]

    def __init__(self, version: int, pid: int, protections: dict[str, Any] | None = None) -> None:
        _set(self, "version", version)
        _set(self, "pid", pid)
        _set(self, "protections", {} if protections is None else protections)

    def to_wire(self) -> list[Any]:
        return ["hello", self.version, self.pid, self.protections]


class Activate(Record):
    """To a spare worker waiting after its hello: load the plugin now."""

    __slots__ = ()

    def to_wire(self) -> list[Any]:
        return ["activate"]


class Ready(Record):
    __slots__ = ("entries",)
    entries: tuple[EntryInfo, ...]

    def __init__(self, entries: tuple[EntryInfo, ...] = ()) -> None:
        _set(self, "entries", entries)

    def to_wire(self) -> list[Any]:
        return ["ready", [entry.to_wire() for entry in self.entries]]


class Fatal(Record):
    __slots__ = ("error",)
    error: ErrorInfo

    def __init__(self, error: ErrorInfo) -> None:
        _set(self, "error", error)

    def to_wire(self) -> list[Any]:
        return ["fatal", self.error.to_wire()]


class Call(Record):
    __slots__ = ("call_id", "entry_id", "args", "fault")
    call_id: int
    entry_id: str
    args: dict[str, Any]
    # A fault the worker must inject into this call (the chaos API): "kill_in_entry"
    # or "" for none. Sent only when set, so ordinary calls keep four items.
    fault: str

    def __init__(self, call_id: int, entry_id: str, args: dict[str, Any], fault: str = "") -> None:
        _set(self, "call_id", call_id)
        _set(self, "entry_id", entry_id)
        _set(self, "args", args)
        _set(self, "fault", fault)

    def to_wire(self) -> list[Any]:
        return call_to_wire(self.call_id, self.entry_id, self.args, self.fault)


def call_to_wire(call_id: int, entry_id: str, args: dict[str, Any], fault: str = "") -> list[Any]:
    """A call's wire shape. The supervisor's call path encodes it straight from its
    parts (no `Call` record per call); `Call.to_wire` uses the same function."""
    if fault:
        return ["call", call_id, entry_id, args, fault]
    return ["call", call_id, entry_id, args]


class Result(Record):
    __slots__ = ("call_id", "ok", "value", "error")
    call_id: int
    ok: bool
    value: Any
    error: ErrorInfo | None

    def __init__(self, call_id: int, ok: bool, value: Any = None, error: ErrorInfo | None = None) -> None:
        _set(self, "call_id", call_id)
        _set(self, "ok", ok)
        _set(self, "value", value)
        _set(self, "error", error)

    def to_wire(self) -> list[Any]:
        if self.ok:
            return ["result", self.call_id, True, self.value]
        assert self.error is not None
        return ["result", self.call_id, False, self.error.to_wire()]


class Cancel(Record):
    __slots__ = ("call_id",)
    call_id: int

    def __init__(self, call_id: int) -> None:
        _set(self, "call_id", call_id)

    def to_wire(self) -> list[Any]:
        return ["cancel", self.call_id]


class Log(Record):
    __slots__ = ("level", "logger", "text")
    level: int
    logger: str
    text: str

    def __init__(self, level: int, logger: str, text: str) -> None:
        _set(self, "level", level)
        _set(self, "logger", logger)
        _set(self, "text", text)

    def to_wire(self) -> list[Any]:
        return ["log", self.level, self.logger, self.text]


class Ping(Record):
    __slots__ = ("nonce",)
    nonce: int

    def __init__(self, nonce: int) -> None:
        _set(self, "nonce", nonce)

    def to_wire(self) -> list[Any]:
        return ["ping", self.nonce]


class Pong(Record):
    __slots__ = ("nonce",)
    nonce: int

    def __init__(self, nonce: int) -> None:
        _set(self, "nonce", nonce)

    def to_wire(self) -> list[Any]:
        return ["pong", self.nonce]


class Shutdown(Record):
    __slots__ = ("grace",)
    grace: float  # seconds the worker may wait for calls in flight before its shutdown hooks

    def __init__(self, grace: float = 0.0) -> None:
        _set(self, "grace", grace)

    def to_wire(self) -> list[Any]:
        return ["shutdown", self.grace]


Message = Hello | Activate | Ready | Fatal | Call | Result | Cancel | Log | Ping | Pong | Shutdown


def _expect(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    # bool is an int subclass; a call id or version of True is still malformed.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ProtocolError(f"{what} has the wrong type: {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _arity(obj: list[Any], n: int) -> None:
    if len(obj) != n:
        raise ProtocolError(f"{obj[0]!r} message needs {n} items, got {len(obj)}")


def _decode_hello(obj: list[Any]) -> Hello:
    _arity(obj, 4)
    protections = _expect(obj[3], dict, "hello.protections")
    if not all(isinstance(key, str) for key in protections):
        raise ProtocolError("hello.protections keys must all be strings")
    return Hello(_expect(obj[1], int, "hello.version"), _expect(obj[2], int, "hello.pid"), protections)


def _decode_activate(obj: list[Any]) -> Activate:
    _arity(obj, 1)
    return Activate()


def _decode_ready(obj: list[Any]) -> Ready:
    _arity(obj, 2)
    entries = _expect(obj[1], list, "ready.entries")
    return Ready(tuple(EntryInfo.from_wire(entry) for entry in entries))


def _decode_fatal(obj: list[Any]) -> Fatal:
    _arity(obj, 2)
    return Fatal(ErrorInfo.from_wire(obj[1]))


CALL_FAULTS = frozenset({"kill_in_entry"})


def _decode_call(obj: list[Any]) -> Call:
    if len(obj) != 5:
        _arity(obj, 4)
    args = _expect(obj[3], dict, "call.args")
    if not all(isinstance(key, str) for key in args):
        raise ProtocolError("call.args keys must all be strings")
    fault = _expect(obj[4], str, "call.fault") if len(obj) == 5 else ""
    if fault and fault not in CALL_FAULTS:
        raise ProtocolError(f"call.fault {fault!r} is not one of {sorted(CALL_FAULTS)}")
    return Call(_expect(obj[1], int, "call.call_id"), _expect(obj[2], str, "call.entry_id"), args, fault)


def _decode_result(obj: list[Any]) -> Result:
    # The hot path of every call: msgpack gives exact types, so `type(...) is` settles
    # the usual frame at once; anything else takes `_expect`, which also words the error.
    if len(obj) != 4:
        _arity(obj, 4)
    call_id, ok = obj[1], obj[2]
    if type(call_id) is not int:
        call_id = _expect(call_id, int, "result.call_id")
    if ok is True:
        return Result(call_id, True, obj[3])
    if ok is not False:
        _expect(ok, bool, "result.ok")
    return Result(call_id, False, None, ErrorInfo.from_wire(obj[3]))


def _decode_cancel(obj: list[Any]) -> Cancel:
    _arity(obj, 2)
    return Cancel(_expect(obj[1], int, "cancel.call_id"))


def _decode_log(obj: list[Any]) -> Log:
    _arity(obj, 4)
    return Log(_expect(obj[1], int, "log.level"), _expect(obj[2], str, "log.logger"), _expect(obj[3], str, "log.text"))


def _decode_ping(obj: list[Any]) -> Ping:
    _arity(obj, 2)
    return Ping(_expect(obj[1], int, "ping.nonce"))


def _decode_pong(obj: list[Any]) -> Pong:
    _arity(obj, 2)
    return Pong(_expect(obj[1], int, "pong.nonce"))


def _decode_shutdown(obj: list[Any]) -> Shutdown:
    _arity(obj, 2)
    grace = _expect(obj[1], (int, float), "shutdown.grace")
    if not grace >= 0:  # also rejects NaN
        raise ProtocolError(f"shutdown.grace must be >= 0, got {grace!r}")
    return Shutdown(float(grace))


_DECODERS: dict[str, Callable[[list[Any]], Message]] = {
    "hello": _decode_hello,
    "activate": _decode_activate,
    "ready": _decode_ready,
    "fatal": _decode_fatal,
    "call": _decode_call,
    "result": _decode_result,
    "cancel": _decode_cancel,
    "log": _decode_log,
    "ping": _decode_ping,
    "pong": _decode_pong,
    "shutdown": _decode_shutdown,
}


def decode_message(obj: Any) -> Message:
    """Turn a decoded msgpack object into a typed message, or raise `ProtocolError`."""
    if not isinstance(obj, list) or not obj:
        raise ProtocolError(f"a message must be a non-empty array, got {type(obj).__name__}")
    tag = obj[0]
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise ProtocolError(f"unknown message tag {tag!r}")
    return decoder(obj)


def check_version(hello: Hello) -> None:
    if hello.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: worker speaks {hello.version}, supervisor speaks {PROTOCOL_VERSION}"
        )
