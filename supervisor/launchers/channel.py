"""The relay channel: one TCP connection per Ray-launched worker, sans-I/O.

    supervisor ---- IN, IN_EOF, SIGNAL ----------------------------> relay actor ---> worker
    supervisor <--- ADMITTED, OUT, ERR, OUT_EOF, ERR_EOF, USAGE, EXIT relay actor <--- worker

Each way is a stream of messages `[kind: 1 byte][length: 4 bytes, big-endian][body]`.
The supervisor opens the connection to the port its worker's relay listens on,
and its first bytes are the token it gave the relay through Ray (`TOKEN_SIZE`
bytes): the relay drops any connection that does not start with it (or does not
say it within a few seconds), answers the one that does with ADMITTED, its first
message, and stops listening. Then, in order:

    IN              bytes for the worker's stdin (its frames), as written
    IN_EOF          close the worker's stdin
    SIGNAL          a signal for the worker's process group (in order with IN: a
                    freeze sent before a call stops the worker before the call arrives)

    OUT, ERR        a piece of the worker's stdout (its frames) or stderr, as read
    OUT_EOF, ERR_EOF that stream ended
    USAGE           one look at the worker's tree: rss (bytes), cpu_time (s), processes
    EXIT            the worker exited and is reaped: its return code; always the last

Frames cross it as the worker wrote them; nothing here decodes them. The body of
IN, OUT or ERR is handed on piece by piece as it arrives (a 16 MiB value is never
held whole here); the others are a few bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

TOKEN_SIZE = 32

IN, IN_EOF, SIGNAL, OUT, ERR, OUT_EOF, ERR_EOF, USAGE, EXIT, ADMITTED = range(1, 11)

_HEADER = struct.Struct("!BI")
# The body of each message that is not a stream's bytes.
BODIES = {
    IN_EOF: struct.Struct(""), SIGNAL: struct.Struct("!i"),
    OUT_EOF: struct.Struct(""), ERR_EOF: struct.Struct(""), USAGE: struct.Struct("!QdI"), EXIT: struct.Struct("!i"),
    ADMITTED: struct.Struct(""),
}
# Dead peers (a lost node, a NAT that forgot the connection) are found by the kernel: probes
# after 10 s of silence, 5 s apart, and the connection fails once 30 s pass unanswered
# (TCP_USER_TIMEOUT: on Linux it bounds the probes too, and unacknowledged data).
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, USER_TIMEOUT_MS = 10, 5, 3, 30_000


def keep_alive(sock: Any) -> None:
    """Set the channel's TCP keepalive on a connected socket (either end)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        if hasattr(socket, option):  # Linux has them all; elsewhere, the system's defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class ChannelError(Exception):
    """The bytes are not this channel's messages: a bug, or something else on the port."""


def stream_header(kind: int, size: int) -> bytes:
    """The header of an IN, OUT or ERR message whose body (`size` bytes) follows."""
    return _HEADER.pack(kind, size)


def message(kind: int, *values: Any) -> bytes:
    """A whole message of a kind with a fixed body (not IN, OUT or ERR)."""
    body = BODIES[kind]
    return _HEADER.pack(kind, body.size) + body.pack(*values)


class Decoder:
    """Feed it one direction's bytes in pieces of any size. It calls, in order,
    `streams[kind](piece)` with each piece of a stream's body, and `handlers[kind](*values)`
    with each other message's values.

    Raises ChannelError on bytes that are not such messages (and reads nothing after them)."""

    def __init__(self, streams: Mapping[int, Callable[[bytes], None]], handlers: Mapping[int, Callable[..., None]]) -> None:
        self._streams = dict(streams)
        self._handlers = dict(handlers)
        self._pending = bytearray()  # a header, or a small body, not yet whole
        self._kind = 0               # the message whose body is being read (0: a header is next)
        self._left = 0               # bytes of that body still to come
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        view = memoryview(data)
        while view:
            if self._kind in self._streams:
                piece, view = view[: self._left], view[self._left :]
                self._left -= len(piece)
                kind = self._kind
                if not self._left:
                    self._kind = 0
                self._streams[kind](bytes(piece))
                continue
            want = self._left if self._kind else _HEADER.size
            take = want - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < want:
                return
            if self._kind:
                kind, self._kind, self._left = self._kind, 0, 0
                values = BODIES[kind].unpack(self._pending)
                self._pending.clear()
                self._handlers[kind](*values)
            else:
                kind, size = _HEADER.unpack(self._pending)
                self._pending.clear()
                self._start(kind, size)

    def _start(self, kind: int, size: int) -> None:
        if kind in self._streams:
            self._kind, self._left = (kind, size) if size else (0, 0)
        elif kind in self._handlers and size == BODIES[kind].size:
            if size:
                self._kind, self._left = kind, size
            else:
                self._handlers[kind]()
        else:
            self._broken = True
            raise ChannelError(f"not a message of this channel: kind {kind}, {size} bytes")
