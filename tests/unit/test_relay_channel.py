"""The Ray relay's channel (supervisor/launchers/channel.py): sans-I/O, any chunking, both ways."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.launchers import channel
from tests.unit.strategies import chunked

FAST = settings(max_examples=200, deadline=None)

# What the relay may send: stream pieces, their ends, usage looks, and the exit last.
RELAY_MESSAGES = st.one_of(
    st.tuples(st.sampled_from([channel.OUT, channel.ERR]), st.binary(min_size=0, max_size=300)),
    st.tuples(st.sampled_from([channel.OUT_EOF, channel.ERR_EOF])),
    st.tuples(st.just(channel.USAGE), st.integers(0, 2**64 - 1), st.floats(0, 1e9), st.integers(0, 2**32 - 1)),
)
SUPERVISOR_MESSAGES = st.one_of(
    st.tuples(st.just(channel.IN), st.binary(min_size=0, max_size=300)),
    st.tuples(st.just(channel.SIGNAL), st.sampled_from([signal.SIGSTOP, signal.SIGCONT, signal.SIGTERM, -1, 2**31 - 1])),
    st.tuples(st.just(channel.IN_EOF)),
)
STREAMS = {channel.IN, channel.OUT, channel.ERR}


def encode(messages: list[tuple[Any, ...]]) -> bytes:
    out = b""
    for kind, *values in messages:
        out += channel.stream_header(kind, len(values[0])) + values[0] if kind in STREAMS else channel.message(kind, *values)
    return out


def recorder(seen: list[tuple[Any, ...]], kinds: set[int]) -> channel.Decoder:
    """A decoder that records what it calls, with each stream's pieces joined back together."""

    def piece(kind: int) -> Any:
        def received(data: bytes) -> None:
            assert data, "an empty piece is never handed on"
            if seen and seen[-1][0] == kind and seen[-1][1] is not None:
                seen[-1] = (kind, seen[-1][1] + data)
            else:
                seen.append((kind, data))
        return received

    def handler(kind: int) -> Any:
        return lambda *values: seen.append((kind, *values))

    streams = {kind: piece(kind) for kind in kinds & STREAMS}
    return channel.Decoder(streams, {kind: handler(kind) for kind in kinds - STREAMS})


def expected(messages: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What the decoder must report: empty stream messages vanish, and consecutive pieces of
    one stream read as one (the recorder joins them)."""
    out: list[tuple[Any, ...]] = []
    for kind, *values in messages:
        if kind in STREAMS:
            if not values[0]:
                continue
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + values[0])
                continue
        out.append((kind, *values))
    return out


@FAST
@given(st.lists(RELAY_MESSAGES, max_size=20), st.integers(-(2**31), 2**31 - 1), st.data())
def test_the_relays_events_come_out_in_order_whatever_the_chunking(
    messages: list[tuple[Any, ...]], returncode: int, data: st.DataObject
) -> None:
    messages = [*messages, (channel.EXIT, returncode)]
    seen: list[tuple[Any, ...]] = []
    decoder = recorder(seen, {channel.OUT, channel.ERR, channel.OUT_EOF, channel.ERR_EOF, channel.USAGE, channel.EXIT})
    for chunk in chunked(data, encode(messages)):
        decoder.feed(chunk)
    assert seen == expected(messages)


@FAST
@given(st.lists(SUPERVISOR_MESSAGES, max_size=20), st.data())
def test_the_supervisors_messages_come_out_in_order_whatever_the_chunking(messages: list[tuple[Any, ...]], data: st.DataObject) -> None:
    seen: list[tuple[Any, ...]] = []
    decoder = recorder(seen, {channel.IN, channel.IN_EOF, channel.SIGNAL})
    for chunk in chunked(data, encode(messages)):
        decoder.feed(chunk)
    assert seen == expected(messages)


def test_a_large_body_is_handed_on_in_the_pieces_it_arrived_in() -> None:
    """A 1 MiB OUT body fed 64 KiB at a time: 16 pieces, none held back until the end."""
    pieces: list[int] = []
    decoder = channel.Decoder({channel.OUT: lambda data: pieces.append(len(data))}, {})
    stream = channel.stream_header(channel.OUT, 1 << 20) + bytes(1 << 20)
    decoder.feed(stream[: 5 + (1 << 16)])
    assert pieces == [1 << 16]  # the first piece is out before the rest arrived
    for start in range(5 + (1 << 16), len(stream), 1 << 16):
        decoder.feed(stream[start : start + (1 << 16)])
    assert pieces == [1 << 16] * 16


@pytest.mark.parametrize(
    "garbage",
    [
        bytes([0, 0, 0, 0, 0]),                                  # kind 0
        bytes([99, 0, 0, 0, 1, 7]),                              # an unknown kind
        channel.stream_header(channel.IN, 3) + b"abc",           # a kind of the other direction
        bytes([channel.EXIT, 0, 0, 0, 9]) + bytes(9),            # a fixed body of the wrong size
        b"GET / HTTP/1.1\r\n\r\n",                               # something else on the port
    ],
)
def test_bytes_that_are_not_messages_raise_channel_error_and_nothing_after_is_read(garbage: bytes) -> None:
    seen: list[tuple[Any, ...]] = []
    decoder = recorder(seen, {channel.OUT, channel.ERR, channel.OUT_EOF, channel.ERR_EOF, channel.USAGE, channel.EXIT})
    with pytest.raises(channel.ChannelError, match="not a message of this channel"):
        decoder.feed(garbage)
    decoder.feed(channel.message(channel.EXIT, 0))  # after the break: ignored
    assert seen == []
