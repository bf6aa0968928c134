"""Typed messages and their wire shapes (the table is in protocol/README.md).

Every message is a msgpack array whose first item is a short tag. Arrays (not
maps) keep frames small and decoding cheap on the hot path (call/result).
Each message class has `to_wire()`; `decode_message()` is the one way back,
and turns any wrong shape into `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ProtocolError

# 2: hello carries the protections the worker applied; 3: call may carry a fault;
# 4: activate, for a spare worker started with --standby
PROTOCOL_VERSION = 4

ERROR_KINDS = frozenset(
    {"entry_not_found", "invalid_arguments", "failed", "unserializable", "cancelled", "start_failed"}
)


@dataclass(frozen=True, slots=True)
class EntryInfo:
    id: str
    name: str = ""
    description: str = ""
    input_schema: Any = None
    timeout: float | None = None
    is_async: bool = False

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


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: str
    type: str
    message: str
    traceback: str = ""

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


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    pid: int
    # What confines this worker, as the worker itself applied it (rlimits, sandbox).
    # Plain msgpack data: the supervisor shows it in the plugin's status.
    protections: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return ["hello", self.version, self.pid, self.protections]


@dataclass(frozen=True, slots=True)
class Activate:
    """To a spare worker waiting after its hello: load the plugin now."""

    def to_wire(self) -> list[Any]:
        return ["activate"]


@dataclass(frozen=True, slots=True)
class Ready:
    entries: tuple[EntryInfo, ...] = field(default_factory=tuple)

    def to_wire(self) -> list[Any]:
        return ["ready", [entry.to_wire() for entry in self.entries]]


@dataclass(frozen=True, slots=True)
class Fatal:
    error: ErrorInfo

    def to_wire(self) -> list[Any]:
        return ["fatal", self.error.to_wire()]


@dataclass(frozen=True, slots=True)
class Call:
    call_id: int
    entry_id: str
    args: dict[str, Any]
    # A fault the worker must inject into this call (the chaos API): "kill_in_entry"
    # or "" for none. Sent only when set, so ordinary calls keep four items.
    fault: str = ""

    def to_wire(self) -> list[Any]:
        base = ["call", self.call_id, self.entry_id, self.args]
        return [*base, self.fault] if self.fault else base


@dataclass(frozen=True, slots=True)
class Result:
    call_id: int
    ok: bool
    value: Any = None
    error: ErrorInfo | None = None

    def to_wire(self) -> list[Any]:
        if self.ok:
            return ["result", self.call_id, True, self.value]
        assert self.error is not None
        return ["result", self.call_id, False, self.error.to_wire()]


@dataclass(frozen=True, slots=True)
class Cancel:
    call_id: int

    def to_wire(self) -> list[Any]:
        return ["cancel", self.call_id]


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    logger: str
    text: str

    def to_wire(self) -> list[Any]:
        return ["log", self.level, self.logger, self.text]


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int

    def to_wire(self) -> list[Any]:
        return ["ping", self.nonce]


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int

    def to_wire(self) -> list[Any]:
        return ["pong", self.nonce]


@dataclass(frozen=True, slots=True)
class Shutdown:
    grace: float = 0.0  # seconds the worker may wait for calls in flight before its shutdown hooks

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
    _arity(obj, 4)
    call_id = _expect(obj[1], int, "result.call_id")
    if _expect(obj[2], bool, "result.ok"):
        return Result(call_id, True, obj[3])
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
