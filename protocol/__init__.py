"""The wire between a supervisor and its workers: length-prefixed msgpack frames.

A leaf package: it imports neither `worker` nor `supervisor`. See
`protocol/messages.py` for the message table and `protocol/README.md`.
"""

from protocol.codec import MessageDecoder, MessageEncoder, encode_message
from protocol.errors import ProtocolError
from protocol.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    FrameEncoder,
    encode,
    frame,
    pack,
    unpack,
)
from protocol.messages import (
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
    Ping,
    Pong,
    Ready,
    Result,
    Shutdown,
    check_version,
    decode_message,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ERROR_KINDS",
    "PROTOCOL_VERSION",
    "Activate",
    "Call",
    "Cancel",
    "EntryInfo",
    "ErrorInfo",
    "Fatal",
    "FrameDecoder",
    "FrameEncoder",
    "Hello",
    "Log",
    "Message",
    "MessageDecoder",
    "MessageEncoder",
    "Ping",
    "Pong",
    "ProtocolError",
    "Ready",
    "Result",
    "Shutdown",
    "check_version",
    "decode_message",
    "encode",
    "encode_message",
    "frame",
    "pack",
    "unpack",
]
