"""Framing: a 4-byte big-endian length, then a msgpack body; sans-I/O, any chunking."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    FrameEncoder,
    MessageDecoder,
    ProtocolError,
    encode,
    frame,
    pack,
    unpack,
)
from tests.unit.strategies import chunked, msgpack_values

FAST = settings(max_examples=200, deadline=None)


def header(length: int) -> bytes:
    return struct.pack(">I", length)


def decode_stream(chunks: list[bytes], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> list[Any]:
    decoder = FrameDecoder(max_frame_size)
    values: list[Any] = []
    for chunk in chunks:
        values.extend(unpack(body) for body in decoder.feed(chunk))
    assert decoder.pending == 0
    decoder.eof()  # a clean end at a frame boundary
    return values


def error_of(action: Any) -> BaseException | None:
    """Run `action()`; the exception it raised, or None."""
    try:
        action()
    except Exception as exc:
        return exc
    return None


# --- round trip -------------------------------------------------------------


@FAST
@given(value=msgpack_values, data=st.data())
def test_one_value_round_trips_through_any_chunking(value: Any, data: st.DataObject) -> None:
    assert decode_stream(chunked(data, encode(value))) == [value]


@FAST
@given(values=st.lists(msgpack_values, max_size=8), data=st.data())
def test_concatenated_frames_come_back_in_order(values: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode(value) for value in values)
    assert decode_stream(chunked(data, stream)) == values


@FAST
@given(bodies=st.lists(st.binary(max_size=64), max_size=8), data=st.data())
def test_frame_bodies_round_trip_including_empty_ones(bodies: list[bytes], data: st.DataObject) -> None:
    decoder = FrameDecoder()
    out: list[bytes] = []
    for chunk in chunked(data, b"".join(frame(body) for body in bodies)):
        out.extend(decoder.feed(chunk))
    assert out == bodies
    assert decoder.pending == 0


def test_byte_at_a_time_gives_the_same_values() -> None:
    values = [None, True, -(2**63), 2**63 - 1, 1.5, "ünïcödé", b"\x00\xff", [1, [2, {"k": b"v"}]], {}]
    stream = b"".join(encode(value) for value in values)
    assert decode_stream([stream[i : i + 1] for i in range(len(stream))]) == values


def test_feed_accepts_bytearray_and_memoryview() -> None:
    stream = encode({"a": 1}) + encode([2])
    decoder = FrameDecoder()
    bodies = decoder.feed(bytearray(stream[:3])) + decoder.feed(memoryview(stream)[3:])
    assert [unpack(body) for body in bodies] == [{"a": 1}, [2]]


def test_frame_is_length_then_body() -> None:
    body = pack({"x": [1, 2]})
    assert frame(body) == header(len(body)) + body
    assert encode({"x": [1, 2]}) == header(len(body)) + body


def test_pending_counts_bytes_of_the_frame_in_progress() -> None:
    stream = encode("hello")
    decoder = FrameDecoder()
    assert decoder.feed(stream[:-1]) == []
    assert decoder.pending > 0
    assert decoder.feed(stream[-1:]) == [pack("hello")]
    assert decoder.pending == 0


# --- the size limit is checked from the header alone ------------------------


def test_header_over_the_limit_raises_before_any_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(ProtocolError, match="101"):
        decoder.feed(header(101))


def test_header_over_the_default_limit_raises_at_once() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(header(DEFAULT_MAX_FRAME_SIZE + 1))


def test_largest_length_field_raises_at_once() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_header_split_across_feeds_raises_on_its_last_byte() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    bad = header(11)
    for byte in bad[:-1]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(ProtocolError):
        decoder.feed(bad[-1:])


def test_length_exactly_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    assert decoder.feed(header(10)) == []
    assert decoder.feed(b"0123456789") == [b"0123456789"]


def test_oversized_frame_after_good_ones_still_raises() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    with pytest.raises(ProtocolError):
        decoder.feed(frame(b"ok", 10) + header(11))


@pytest.mark.parametrize("size", [0, -1, 2**32])
def test_decoder_rejects_an_impossible_limit(size: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(size)


def test_frame_refuses_an_oversized_body() -> None:
    assert frame(b"x" * 10, max_frame_size=10) == header(10) + b"x" * 10
    with pytest.raises(ProtocolError, match="11"):
        frame(b"x" * 11, max_frame_size=10)


def test_encode_refuses_a_value_too_large_to_frame() -> None:
    with pytest.raises(ProtocolError):
        encode("x" * 100, max_frame_size=50)


def test_pack_refuses_what_msgpack_cannot_encode() -> None:
    with pytest.raises(TypeError):
        pack(object())


# --- end of stream, and a broken decoder stays broken ------------------------


@pytest.mark.parametrize("partial", [b"\x00", b"\x00\x00\x00", header(5), header(5) + b"abc"], ids=["1-byte", "3-byte", "header", "part-body"])
def test_eof_inside_a_frame_raises(partial: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(partial) == []
    with pytest.raises(ProtocolError):
        decoder.eof()


def test_eof_at_a_frame_boundary_is_clean() -> None:
    FrameDecoder().eof()  # nothing received at all
    decoder = FrameDecoder()
    assert decoder.feed(encode(1) + encode(2)) == [pack(1), pack(2)]
    decoder.eof()


def test_decoder_refuses_input_after_an_oversized_header() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    with pytest.raises(ProtocolError):
        decoder.feed(header(11))
    with pytest.raises(ProtocolError):
        decoder.feed(frame(b"ok"))


def test_decoder_refuses_input_after_eof_inside_a_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(header(5))
    with pytest.raises(ProtocolError):
        decoder.eof()
    with pytest.raises(ProtocolError):
        decoder.feed(b"12345")


def test_message_decoder_refuses_input_after_a_bad_body() -> None:
    # Frames that arrived in the same chunk as the bad one are dropped with it
    # (here ["ping", 0]), so carrying on would silently lose messages: a bad
    # body must be as fatal as a bad header.
    decoder = MessageDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(frame(b"\xc1") + encode(["ping", 0]))
    with pytest.raises(ProtocolError):
        decoder.feed(encode(["ping", 1]))


# --- invalid bodies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (b"\xc1", msgpack.exceptions.FormatError),  # a byte msgpack never uses
        (b"\x92\x01", ValueError),  # an array of 2 with only 1 item
        (b"\x01\x02", msgpack.exceptions.ExtraData),  # two objects in one body
        (b"", ValueError),
    ],
    ids=["reserved-byte", "truncated", "extra-data", "empty"],
)
def test_invalid_msgpack_body_is_protocol_error_with_the_cause_chained(body: bytes, cause: type[Exception]) -> None:
    with pytest.raises(ProtocolError) as info:
        unpack(body)
    assert isinstance(info.value.__cause__, cause)
    assert not isinstance(info.value.__cause__, ProtocolError)


def test_invalid_body_through_the_message_decoder_chains_the_cause() -> None:
    with pytest.raises(ProtocolError) as info:
        MessageDecoder().feed(frame(b"\xc1"))
    assert isinstance(info.value.__cause__, msgpack.exceptions.FormatError)


# --- garbage never escapes as anything but ProtocolError ----------------------


@FAST
@given(garbage=st.binary(max_size=512), data=st.data())
def test_garbage_bytes_raise_only_protocol_error(garbage: bytes, data: st.DataObject) -> None:
    decoder = MessageDecoder(max_frame_size=data.draw(st.sampled_from([16, 1024, DEFAULT_MAX_FRAME_SIZE])))

    def run() -> None:
        for chunk in chunked(data, garbage):
            decoder.feed(chunk)
        decoder.eof()

    error = error_of(run)
    assert error is None or isinstance(error, ProtocolError), repr(error)


@FAST
@given(bodies=st.lists(st.binary(max_size=64), min_size=1, max_size=6), data=st.data())
def test_garbage_bodies_in_valid_frames_raise_only_protocol_error(bodies: list[bytes], data: st.DataObject) -> None:
    # Well-formed lengths, so the garbage reaches msgpack and the message decoder.
    decoder = MessageDecoder()

    def run() -> None:
        for chunk in chunked(data, b"".join(frame(body) for body in bodies)):
            decoder.feed(chunk)

    error = error_of(run)
    assert error is None or isinstance(error, ProtocolError), repr(error)


@FAST
@given(value=msgpack_values)
def test_framed_msgpack_values_decode_or_raise_protocol_error(value: Any) -> None:
    error = error_of(lambda: MessageDecoder().feed(encode(value)))
    assert error is None or isinstance(error, ProtocolError), repr(error)


@FAST
@given(values=st.lists(msgpack_values, max_size=5))
def test_a_reused_encoder_writes_what_encode_writes(values: list[Any]) -> None:
    encoder = FrameEncoder()
    for value in values:
        assert encoder.encode(value) == encode(value)


def test_a_reused_encoder_starts_clean_after_a_failed_pack() -> None:
    encoder = FrameEncoder()
    with pytest.raises(TypeError):
        encoder.encode(["call", 1, "e", {"a": object()}])
    assert encoder.encode([1, 2]) == encode([1, 2])


def test_a_reused_encoder_refuses_a_frame_over_its_limit() -> None:
    with pytest.raises(ProtocolError):
        FrameEncoder(max_frame_size=8).encode(b"x" * 16)


def test_the_frame_encoder_drops_a_packer_grown_by_a_large_message() -> None:
    """A reused Packer keeps its largest buffer: after a large body, or a pack that
    failed, a new one is used (the bytes stay those of `encode`)."""
    encoder = FrameEncoder()
    small = {"call": 1}
    first = encoder._pack
    assert encoder.encode(small) == encode(small) and encoder._pack is first  # kept: the point of it
    big = {"data": b"x" * FrameEncoder.KEEP_BELOW}
    assert encoder.encode(big) == encode(big)
    assert encoder._pack is not first
    second = encoder._pack
    with pytest.raises(TypeError):
        encoder.encode({"bad": object()})
    assert encoder._pack is not second
    assert encoder.encode(small) == encode(small)
