"""Sans-I/O framing: a frame is a 4-byte big-endian length, then a msgpack body.

    +----------------+---------------------------+
    | length (u32 BE)| msgpack body (length bytes)|
    +----------------+---------------------------+

`FrameDecoder.feed()` takes bytes in any chunking and returns the bodies that
became complete; the length is checked against `max_frame_size` as soon as the
4-byte header is in, before any of the body is buffered, so a hostile peer
cannot make us allocate a huge buffer. `pack()` / `unpack()` are the only
places msgpack is called, so the wire format (and its error translation) lives
in one module. Pickle is never used.

`pack()` builds a msgpack Packer per call, which is safe from any thread; a
`FrameEncoder` keeps one Packer (building it costs more than packing a small
call), so it belongs to one thread: the supervisor's loop thread, which writes
every frame it sends. The worker writes results from pool threads and keeps `pack()`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from protocol.errors import ProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_LENGTH_FIELD = 2**32 - 1


def pack(obj: Any) -> bytes:
    """Encode one object as a msgpack body (bytes stay bytes, str stays str).

    Raises `TypeError` (msgpack's own) for an object msgpack cannot encode: the
    caller knows whether that is a bad argument or a bad result.
    """
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return body


def unpack(body: bytes | bytearray | memoryview) -> Any:
    """Decode one msgpack body; anything malformed becomes `ProtocolError`."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack documents that unpacking may raise anything
        raise ProtocolError(f"invalid msgpack body ({len(body)} bytes): {type(exc).__name__}: {exc}") from exc


def frame(body: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Prefix a body with its length; refuse a body the peer would refuse."""
    if len(body) > max_frame_size:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the limit of {max_frame_size} bytes")
    return HEADER.pack(len(body)) + body


def encode(obj: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """`pack` then `frame`: the bytes to write for one message."""
    return frame(pack(obj), max_frame_size)


class FrameEncoder:
    """`encode()` with one reused msgpack Packer: the same bytes, without building a
    Packer per frame. Not thread-safe: the Packer's buffer is shared between calls.

    A Packer's buffer grows to its largest message and never shrinks: after a
    large one (or a pack that raised part-way), the Packer is replaced, so one
    16 MiB argument does not pin twice that for the life of the worker.
    """

    __slots__ = ("_pack", "max_frame_size")

    KEEP_BELOW = 1 << 20  # bytes of a body after which the Packer is not kept

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._pack = self._new_packer()

    @staticmethod
    def _new_packer() -> Any:
        return msgpack.Packer(use_bin_type=True).pack  # autoreset: each call returns one body

    def encode(self, obj: Any) -> bytes:
        """`encode(obj, max_frame_size)`: the bytes to write for one message."""
        try:
            body = self._pack(obj)
        except BaseException:
            self._pack = self._new_packer()
            raise
        if len(body) >= self.KEEP_BELOW:
            self._pack = self._new_packer()
        return frame(body, self.max_frame_size)


class FrameDecoder:
    """Feed bytes, get whole frame bodies; any chunking gives the same bodies.

    Invariant: `_buffer` never holds more than one header plus `max_frame_size`
    bytes of a body that is still incomplete, plus whatever one `feed()` added.
    After a `ProtocolError` the stream is out of step and the decoder refuses
    all further input: a framing error is fatal to the connection.
    """

    __slots__ = ("_broken", "_buffer", "_need", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= MAX_LENGTH_FIELD:
            raise ValueError(f"max_frame_size must be between 1 and {MAX_LENGTH_FIELD}, got {max_frame_size}")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._need = -1  # body length of the frame in progress, -1 while reading a header
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a returned frame (0 at a frame boundary)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._broken:
            raise ProtocolError("decoder is broken by an earlier protocol error")
        buffer = self._buffer
        buffer += data
        bodies: list[bytes] = []
        offset = 0
        end = len(buffer)
        while True:
            if self._need < 0:
                if end - offset < HEADER_SIZE:
                    break
                (length,) = HEADER.unpack_from(buffer, offset)
                if length > self.max_frame_size:
                    self._broken = True
                    raise ProtocolError(
                        f"frame length {length} exceeds the limit of {self.max_frame_size} bytes"
                    )
                offset += HEADER_SIZE
                self._need = length
            if end - offset < self._need:
                break
            bodies.append(bytes(buffer[offset : offset + self._need]))
            offset += self._need
            self._need = -1
        if offset:
            del buffer[:offset]
        return bodies

    def break_stream(self) -> None:
        """Refuse all further input (the caller found a message it cannot accept)."""
        self._broken = True

    def eof(self) -> None:
        """Declare the stream ended; a partial frame left over is a `ProtocolError`."""
        if self._buffer or self._need >= 0:
            self._broken = True
            raise ProtocolError(f"stream ended inside a frame ({len(self._buffer)} bytes pending)")
