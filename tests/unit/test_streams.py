"""The blocking I/O helpers over a real pipe."""

from __future__ import annotations

import os
import threading

import pytest

from protocol import Call, Log, Ping, ProtocolError
from protocol.streams import BlockingWriter, read_messages


def test_frames_from_many_threads_never_interleave() -> None:
    read_fd, write_fd = os.pipe()
    writer = BlockingWriter(write_fd)
    messages = [Call(i, "entry", {"payload": "x" * (i * 997 % 70_000)}) for i in range(200)]

    def send(part: list[Call]) -> None:
        for message in part:
            writer.send(message)

    threads = [threading.Thread(target=send, args=(messages[i::4],)) for i in range(4)]
    received: list[object] = []
    reader = threading.Thread(target=lambda: received.extend(read_messages(read_fd)))
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(write_fd)
    reader.join(timeout=30)
    assert not reader.is_alive()
    os.close(read_fd)
    assert sorted(received, key=lambda m: m.call_id) == messages  # type: ignore[attr-defined]


def test_read_messages_stops_at_eof_and_rejects_a_partial_frame() -> None:
    read_fd, write_fd = os.pipe()
    BlockingWriter(write_fd).send(Ping(1))
    os.write(write_fd, b"\x00\x00\x00\x10abc")  # a frame cut short
    os.close(write_fd)
    stream = read_messages(read_fd)
    assert next(stream) == Ping(1)
    with pytest.raises(ProtocolError, match="inside a frame"):
        next(stream)
    os.close(read_fd)


def test_a_frame_written_while_the_writer_is_busy_on_the_same_thread_is_deferred_not_lost() -> None:
    # What a signal handler that logs does: write_frame re-entered on the thread holding the lock.
    read_fd, write_fd = os.pipe()
    writer = BlockingWriter(write_fd)
    original = writer._write_all
    nested = [False]

    def write_all_then_reenter(data: bytes) -> None:
        original(data)
        if not nested[0]:
            nested[0] = True
            writer.send(Log(30, "signal", "from the handler"))

    writer._write_all = write_all_then_reenter  # type: ignore[method-assign]
    writer.send(Ping(7))
    os.close(write_fd)
    assert list(read_messages(read_fd)) == [Ping(7), Log(30, "signal", "from the handler")]
    os.close(read_fd)
