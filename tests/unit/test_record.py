"""Messages are `Record`s: they must behave as the frozen, slotted dataclasses they replaced."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from protocol import Call, EntryInfo, ErrorInfo, Hello, Ping, Pong, Ready, Result, Shutdown


@dataclasses.dataclass(frozen=True, slots=True)
class CallAsDataclass:
    call_id: int
    entry_id: str
    args: dict[str, Any]
    fault: str = ""


def test_repr_equality_and_hash_are_the_dataclass_ones() -> None:
    ours, theirs = Call(1, "echo", {"value": 2}), CallAsDataclass(1, "echo", {"value": 2})
    assert repr(ours) == repr(theirs).replace("CallAsDataclass", "Call")
    assert Ping(7) == Ping(7) and Ping(7) != Ping(8)
    assert Ping(7) != Pong(7)  # same fields, another class
    assert hash(Ping(7)) == hash(Ping(7)) == hash((7,))
    with pytest.raises(TypeError, match="unhashable"):
        hash(ours)  # a dict field, as with the dataclass


def test_fields_are_frozen() -> None:
    error = ErrorInfo("failed", "ValueError", "boom")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'message'"):
        error.message = "other"  # type: ignore[misc]  # the point of the test
    with pytest.raises(dataclasses.FrozenInstanceError):
        del error.kind
    with pytest.raises(AttributeError):
        error.extra = 1  # type: ignore[attr-defined]  # no such field
    assert not hasattr(error, "__dict__")


def test_defaults_and_keywords() -> None:
    assert Hello(4, 1).protections == {} and Hello(4, 1).protections is not Hello(4, 1).protections
    assert Ready().entries == () and Shutdown().grace == 0.0
    assert EntryInfo(id="e", timeout=1.5) == EntryInfo("e", "", "", None, 1.5, False)
    assert Result(call_id=3, ok=False, error=ErrorInfo("failed", "E", "m")).value is None


@pytest.mark.parametrize(
    "message", [Call(1, "echo", {"value": [1, 2]}, "kill_in_entry"), Ready((EntryInfo("e"),)), Hello(4, 9, {"a": 1})]
)
def test_copy_and_pickle_round_trip(message: Any) -> None:
    assert copy.copy(message) == message
    assert copy.deepcopy(message) == message
    assert pickle.loads(pickle.dumps(message)) == message


def test_match_by_position() -> None:
    match Call(5, "echo", {}):
        case Call(call_id, entry_id):
            assert (call_id, entry_id) == (5, "echo")
        case _:
            pytest.fail("Call did not match by position")
    assert Result.__match_args__ == ("call_id", "ok", "value", "error")


def test_a_subclass_keeps_the_fields_of_its_base() -> None:
    class Loud(Ping):
        __slots__ = ()

    assert repr(Loud(3)) == "test_a_subclass_keeps_the_fields_of_its_base.<locals>.Loud(nonce=3)"
    assert Loud(3) == Loud(3) and Loud(3) != Ping(3)
    assert Loud.__match_args__ == ("nonce",)
