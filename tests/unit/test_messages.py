"""Typed messages: every type round-trips; anything malformed is `ProtocolError`."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    ERROR_KINDS,
    PROTOCOL_VERSION,
    Activate,
    Call,
    Cancel,
    EntryInfo,
    ErrorInfo,
    Fatal,
    Hello,
    Log,
    Message,
    MessageDecoder,
    MessageEncoder,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Result,
    Shutdown,
    check_version,
    decode_message,
    encode_message,
)
from tests.unit.strategies import INT64_MAX, INT64_MIN, chunked, msgpack_values

FAST = settings(max_examples=200, deadline=None)

ERROR = ErrorInfo("failed", "ValueError", "bad value", "Traceback (most recent call last): ...")

SAMPLES: list[Message] = [
    Hello(PROTOCOL_VERSION, 4242),
    Hello(PROTOCOL_VERSION, 4242, {"core_dumps": "off", "sandbox": {"abi": 7, "network": "denied"}}),
    Activate(),
    Ready(()),
    Ready(
        (
            EntryInfo("plain"),
            EntryInfo("full", "Full", "does it all", {"type": "object", "properties": {}}, 2.5, True),
        )
    ),
    Fatal(ErrorInfo("start_failed", "ImportError", "no module named nope", "tb")),
    Call(1, "greet", {}),
    Call(INT64_MAX, "greet", {"name": "ünï", "blob": b"\x00\xff", "nested": [1, {"k": None}], "f": -0.5}),
    Result(1, True, None),
    Result(2, True, {"value": [1, 2.5, "x", b"y", True]}),
    Result(3, False, None, ERROR),
    Cancel(7),
    Log(20, "plugin.echo", "hello"),
    Ping(0),
    Pong(INT64_MIN),
    Shutdown(),
]


def decode_one(data: bytes) -> Message:
    decoder = MessageDecoder()
    messages = decoder.feed(data)
    decoder.eof()
    assert len(messages) == 1
    return messages[0]


def test_samples_cover_every_message_type() -> None:
    assert {type(message) for message in SAMPLES} == set(typing.get_args(Message))


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: Message) -> None:
    decoded = decode_one(encode_message(message))
    assert decoded == message
    assert type(decoded) is type(message)


@pytest.mark.parametrize("kind", sorted(ERROR_KINDS))
def test_every_error_kind_round_trips(kind: str) -> None:
    message = Result(9, False, None, ErrorInfo(kind, "T", "m", "tb"))
    assert decode_one(encode_message(message)) == message


def test_entry_timeout_arrives_as_float() -> None:
    decoded = decode_one(encode_message(Ready((EntryInfo("e", timeout=3),))))
    assert isinstance(decoded, Ready)
    assert decoded.entries[0].timeout == 3.0
    assert isinstance(decoded.entries[0].timeout, float)


@FAST
@given(data=st.data())
def test_all_samples_in_one_stream_survive_any_chunking(data: st.DataObject) -> None:
    stream = b"".join(encode_message(message) for message in SAMPLES)
    decoder = MessageDecoder()
    out: list[Message] = []
    for chunk in chunked(data, stream):
        out.extend(decoder.feed(chunk))
    assert out == SAMPLES


@FAST
@given(
    call_id=st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    entry_id=st.text(),
    args=st.dictionaries(st.text(), msgpack_values, max_size=5),
    value=msgpack_values,
)
def test_call_and_result_carry_arbitrary_values(call_id: int, entry_id: str, args: dict[str, Any], value: Any) -> None:
    for message in (Call(call_id, entry_id, args), Result(call_id, True, value)):
        assert decode_one(encode_message(message)) == message


# --- decode_message rejects malformed shapes ----------------------------------


@pytest.mark.parametrize("obj", ["ping", b"ping", 5, None, {"tag": "ping"}, 1.5], ids=repr)
def test_non_list_is_rejected(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_message(obj)


def test_empty_list_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        decode_message([])


@pytest.mark.parametrize("obj", [["nope"], ["PING", 1], [b"ping", 1], [1, 2], [None], [["ping"], 1]], ids=repr)
def test_unknown_tag_is_rejected(obj: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_message(obj)


def _wire(message: Message) -> list[Any]:
    wire = message.to_wire()
    assert isinstance(wire, list)
    return wire


ONE_OF_EACH = {type(message): message for message in SAMPLES}


@pytest.mark.parametrize("message", list(ONE_OF_EACH.values()), ids=lambda m: type(m).__name__)
def test_one_item_too_many_is_rejected(message: Message) -> None:
    with pytest.raises(ProtocolError, match=r"items|call\.fault"):  # a call's optional fifth item is its fault
        decode_message([*_wire(message), 0])


@pytest.mark.parametrize(
    "message", [m for m in ONE_OF_EACH.values() if len(_wire(m)) > 1], ids=lambda m: type(m).__name__
)
def test_one_item_too_few_is_rejected(message: Message) -> None:
    with pytest.raises(ProtocolError, match="items"):
        decode_message(_wire(message)[:-1])


GOOD_ERROR = {"kind": "failed", "type": "E", "message": "m", "traceback": ""}

WRONG_TYPES = [
    # bool is an int subclass, but a call id of True is malformed
    ["call", True, "entry", {}],
    ["call", 1.0, "entry", {}],
    ["call", "1", "entry", {}],
    ["call", 1, 2, {}],
    ["call", 1, "entry", []],
    ["call", 1, "entry", None],
    ["call", 1, "entry", {1: "x"}],
    ["call", 1, "entry", {b"key": "x"}],
    ["call", 1, "entry", {"ok": 1, None: 2}],
    ["result", True, True, None],
    ["result", 1, 1, None],
    ["result", 1, "yes", None],
    ["result", 1, False, "just a string"],
    ["result", 1, False, {**GOOD_ERROR, "kind": "exploded"}],
    ["result", 1, False, {**GOOD_ERROR, "kind": None}],
    ["result", 1, False, {**GOOD_ERROR, "message": 5}],
    ["fatal", {**GOOD_ERROR, "kind": "exploded"}],
    ["fatal", {"type": "E", "message": "m"}],
    ["fatal", ["failed", "E", "m", ""]],
    ["hello", True, 1],
    ["hello", "1", 1],
    ["hello", 1, None],
    ["ready", {}],
    ["ready", ["entry"]],
    ["ready", [{"name": "no id"}]],
    ["ready", [{"id": 5}]],
    ["ready", [{"id": "e", "timeout": "5"}]],
    ["ready", [{"id": "e", "timeout": True}]],
    ["ready", [{"id": "e", "is_async": 1}]],
    ["ready", [{"id": "e", "name": None}]],
    ["cancel", True],
    ["cancel", "7"],
    ["log", "INFO", "logger", "text"],
    ["log", 20, None, "text"],
    ["log", 20, "logger", b"text"],
    ["ping", "nonce"],
    ["ping", False],
    ["pong", None],
]


@pytest.mark.parametrize("obj", WRONG_TYPES, ids=repr)
def test_wrong_field_type_is_rejected(obj: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_message(obj)


def test_unknown_error_kind_is_named() -> None:
    with pytest.raises(ProtocolError, match="exploded"):
        decode_message(["result", 1, False, {**GOOD_ERROR, "kind": "exploded"}])


def test_result_value_may_be_anything_when_ok() -> None:
    # The value of a successful result is the plugin's: no shape is imposed on it.
    assert decode_message(["result", 1, True, {"kind": "not an error"}]) == Result(1, True, {"kind": "not an error"})


# --- version -------------------------------------------------------------------


def test_check_version_accepts_ours() -> None:
    check_version(Hello(PROTOCOL_VERSION, 1))


def test_check_version_names_both_versions() -> None:
    theirs = PROTOCOL_VERSION + 9876
    with pytest.raises(ProtocolError) as info:
        check_version(Hello(theirs, 1))
    text = str(info.value)
    assert str(theirs) in text
    assert str(PROTOCOL_VERSION) in text.replace(str(theirs), "")


# --- anything msgpack can produce decodes or is ProtocolError -------------------

# Near-misses reach deeper than uniformly random objects: a known tag and the
# right number of items, each either of the right type or anything at all;
# or a known tag followed by any items.
def _sometimes(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return good | msgpack_values


error_maps = st.fixed_dictionaries(
    {"kind": _sometimes(st.sampled_from(sorted(ERROR_KINDS)))},
    optional={name: _sometimes(st.text(max_size=5)) for name in ("type", "message", "traceback")},
)
entry_maps = st.fixed_dictionaries(
    {"id": _sometimes(st.text(max_size=5))},
    optional={
        "name": _sometimes(st.text(max_size=5)),
        "description": _sometimes(st.text(max_size=5)),
        "input_schema": msgpack_values,
        "timeout": _sometimes(st.none() | st.integers(0, 100) | st.floats(0, 100)),
        "is_async": _sometimes(st.booleans()),
    },
)
ints = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
text = st.text(max_size=5)
SHAPES: dict[str, list[st.SearchStrategy[Any]]] = {
    "hello": [ints, ints, st.dictionaries(text, msgpack_values, max_size=3)],
    "activate": [],
    "ready": [st.lists(_sometimes(entry_maps), max_size=3)],
    "fatal": [error_maps],
    "call": [ints, text, st.dictionaries(text, msgpack_values, max_size=3)],
    "result": [ints, st.booleans(), msgpack_values | error_maps],
    "cancel": [ints],
    "log": [ints, text, text],
    "ping": [ints],
    "pong": [ints],
    "shutdown": [st.floats(0, 100) | st.integers(0, 100)],
}


def near_misses(tag: str) -> st.SearchStrategy[list[Any]]:
    right_arity = st.tuples(*map(_sometimes, SHAPES[tag])).map(lambda items: [tag, *items])
    any_arity = st.lists(msgpack_values | error_maps | st.lists(entry_maps | msgpack_values, max_size=3), max_size=4)
    return right_arity | any_arity.map(lambda items: [tag, *items])


def test_near_misses_know_every_tag() -> None:
    for message in SAMPLES:
        tag, *items = _wire(message)
        assert len(SHAPES[tag]) == len(items), tag
    assert set(SHAPES) == {_wire(message)[0] for message in SAMPLES}


def _decode_or_protocol_error(obj: Any) -> None:
    try:
        decode_message(obj)
    except Exception as exc:
        error: Exception | None = exc
    else:
        error = None
    assert error is None or isinstance(error, ProtocolError), repr(error)


@FAST
@given(obj=msgpack_values)
def test_arbitrary_objects_decode_or_raise_protocol_error(obj: Any) -> None:
    _decode_or_protocol_error(obj)


@pytest.mark.parametrize("tag", sorted(SHAPES))
@settings(max_examples=100, deadline=None)  # x10 tags
@given(data=st.data())
def test_near_miss_messages_decode_or_raise_protocol_error(tag: str, data: st.DataObject) -> None:
    _decode_or_protocol_error(data.draw(near_misses(tag)))


def test_a_call_carries_a_fault_only_when_one_is_set() -> None:
    plain, faulty = Call(7, "greet", {}), Call(7, "greet", {}, "kill_in_entry")
    assert plain.to_wire() == ["call", 7, "greet", {}]
    assert decode_message(faulty.to_wire()) == faulty
    with pytest.raises(ProtocolError, match=r"call\.fault"):
        decode_message(["call", 7, "greet", {}, "explode"])


@given(
    call_id=st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    entry_id=st.text(),
    args=st.dictionaries(st.text(), msgpack_values, max_size=5),
    fault=st.sampled_from(["", "kill_in_entry"]),
)
def test_the_call_fast_path_writes_the_same_bytes(call_id: int, entry_id: str, args: dict[str, Any], fault: str) -> None:
    encoder = MessageEncoder()
    assert encoder.encode_call(call_id, entry_id, args, fault) == encode_message(Call(call_id, entry_id, args, fault))
    assert encoder.encode(Call(call_id, entry_id, args, fault)) == encode_message(Call(call_id, entry_id, args, fault))


@pytest.mark.parametrize("call_id", [True, False, 1.0, "7", None], ids=repr)
def test_a_result_call_id_of_another_type_is_rejected(call_id: Any) -> None:
    with pytest.raises(ProtocolError, match=r"result\.call_id has the wrong type"):
        decode_message(["result", call_id, True, None])


@pytest.mark.parametrize("ok", [1, 0, None, "true"], ids=repr)
def test_a_result_ok_that_is_not_a_bool_is_rejected(ok: Any) -> None:
    with pytest.raises(ProtocolError, match=r"result\.ok has the wrong type"):
        decode_message(["result", 7, ok, None])
