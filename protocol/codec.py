"""Messages <-> bytes, sans-I/O: framing plus the typed message set, nothing else."""

from __future__ import annotations

from protocol.errors import ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode, unpack
from protocol.messages import Message, decode_message


def encode_message(message: Message, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame for one message. `TypeError` if a value in it cannot be encoded,
    `ProtocolError` if it is larger than `max_frame_size`."""
    return encode(message.to_wire(), max_frame_size)


class MessageDecoder:
    """Feed bytes in any chunking, get typed messages; malformed input is `ProtocolError`."""

    __slots__ = ("_frames",)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._frames = FrameDecoder(max_frame_size)

    @property
    def pending(self) -> int:
        return self._frames.pending

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        try:
            return [decode_message(unpack(body)) for body in self._frames.feed(data)]
        except ProtocolError:
            self._frames.break_stream()  # a bad message is as fatal as a bad frame
            raise

    def eof(self) -> None:
        self._frames.eof()


__all__ = ["MessageDecoder", "ProtocolError", "encode_message"]
