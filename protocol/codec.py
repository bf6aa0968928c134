"""Messages <-> bytes, sans-I/O: framing plus the typed message set, nothing else."""

from __future__ import annotations

from typing import Any

from protocol.errors import ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameEncoder, encode, unpack
from protocol.messages import Message, call_to_wire, decode_message


def encode_message(message: Message, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame for one message. `TypeError` if a value in it cannot be encoded,
    `ProtocolError` if it is larger than `max_frame_size`. Safe from any thread."""
    return encode(message.to_wire(), max_frame_size)


class MessageEncoder:
    """`encode_message` for one thread, with a reused Packer (see `FrameEncoder`);
    `encode_call` is the call path's: a call's frame from its parts, no `Call` record.
    Errors as `encode_message`."""

    __slots__ = ("_frames",)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._frames = FrameEncoder(max_frame_size)

    def encode(self, message: Message) -> bytes:
        return self._frames.encode(message.to_wire())

    def encode_call(self, call_id: int, entry_id: str, args: dict[str, Any], fault: str = "") -> bytes:
        """The same bytes as `encode(Call(call_id, entry_id, args, fault))`."""
        return self._frames.encode(call_to_wire(call_id, entry_id, args, fault))


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


__all__ = ["MessageDecoder", "MessageEncoder", "ProtocolError", "encode_message"]
