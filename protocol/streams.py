"""Thin I/O helpers over the sans-I/O codec: one asyncio protocol, one blocking reader/writer.

Nothing here knows about plugins or calls; both the worker and the supervisor
use these to move `Message`s over a pipe.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Callable, Iterator

from protocol.codec import MessageDecoder, encode_message
from protocol.errors import ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME_SIZE
from protocol.messages import Message

READ_CHUNK = 256 * 1024


class MessageProtocol(asyncio.Protocol):
    """asyncio read side: calls `on_message` per message, `on_close(error)` once at the end.

    `on_close` gets `None` on a clean EOF at a frame boundary, or the
    `ProtocolError` that broke the stream (after which no more messages arrive).
    """

    def __init__(
        self,
        on_message: Callable[[Message], None],
        on_close: Callable[[BaseException | None], None],
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._decoder = MessageDecoder(max_frame_size)
        self._on_message = on_message
        self._on_close = on_close
        self._transport: asyncio.BaseTransport | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._close(exc)
            if self._transport is not None:
                self._transport.close()
            return
        for message in messages:
            self._on_message(message)

    def eof_received(self) -> bool | None:
        error: BaseException | None = None
        try:
            self._decoder.eof()
        except ProtocolError as exc:
            error = exc
        self._close(error)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(exc)

    def _close(self, error: BaseException | None) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(error)


class BlockingWriter:
    """Writes whole frames to a blocking fd; safe to call from any thread, and
    from a signal handler that interrupts a write on the same thread.

    The lock keeps frames from different threads from interleaving; the frame
    is built before the lock is taken so encoding runs in parallel. A signal
    handler that logs while its own thread holds the lock would deadlock on a
    plain lock and corrupt the stream with a reentrant one, so its frame is
    queued instead, and the interrupted writer sends it right after its own.
    """

    def __init__(self, fd: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.fd = fd
        self.max_frame_size = max_frame_size
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._deferred: collections.deque[bytes] = collections.deque()

    def send(self, message: Message) -> None:
        self.write_frame(encode_message(message, self.max_frame_size))

    def write_frame(self, data: bytes) -> None:
        me = threading.get_ident()
        if self._owner == me:
            self._deferred.append(data)  # re-entered from a signal handler mid-write
            return
        with self._lock:
            self._owner = me
            try:
                self._write_all(data)
                while self._deferred:
                    self._write_all(self._deferred.popleft())
            finally:
                self._owner = None

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


def read_messages(fd: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> Iterator[Message]:
    """Blocking reader: yields messages until EOF; a partial frame at EOF is a `ProtocolError`."""
    decoder = MessageDecoder(max_frame_size)
    while True:
        data = os.read(fd, READ_CHUNK)
        if not data:
            decoder.eof()
            return
        yield from decoder.feed(data)
