"""The reference: what a bare parent/child pair does with the same design and nothing else.

The child reads 4-byte big-endian length-prefixed msgpack frames from stdin and
writes each answer the same way to stdout; the parent is asyncio, one reader
task matching answers to calls by id. No supervisor, no SDK, no safety: the
physical limit our design can approach.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import sys
import time
from typing import Any

import msgpack

from bench.echo import gather_bounded

HEADER = struct.Struct(">I")

# Reads as much as is there, answers every whole frame in it with one write.
CHILD = r"""
import os, struct, msgpack
header = struct.Struct(">I")
buffer = bytearray()
ready = msgpack.packb(["ready"])
os.write(1, header.pack(len(ready)) + ready)
while True:
    data = os.read(0, 1 << 20)
    if not data:
        break
    buffer += data
    out = []
    while len(buffer) >= 4:
        (size,) = header.unpack_from(buffer)
        if len(buffer) < 4 + size:
            break
        call_id, value = msgpack.unpackb(memoryview(buffer)[4 : 4 + size])
        del buffer[: 4 + size]
        body = msgpack.packb([call_id, value])
        out.append(header.pack(len(body)) + body)
    if out:
        data = b"".join(out)
        while data:
            data = data[os.write(1, data):]
"""

# The cold-start reference: import msgpack, say one frame, wait for stdin to close.
BARE_CHILD = r"""
import os, struct, msgpack
body = msgpack.packb(["ready"])
os.write(1, struct.pack(">I", len(body)) + body)
os.read(0, 1)
"""


class ReferenceEcho:
    """An `Echo` contestant over the bare child."""

    name = "reference: asyncio parent, bare child over pipes"

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26
        )
        assert self._process.stdout is not None
        await _read_frame(self._process.stdout)  # ready
        self._reader = asyncio.ensure_future(self._read())
        await self.call(b"warm")

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            call_id, value = msgpack.unpackb(await _read_frame(self._process.stdout))
            future = self._pending.pop(call_id)
            if not future.done():
                future.set_result(value)

    async def call(self, value: Any) -> Any:
        assert self._process is not None and self._process.stdin is not None
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        body = msgpack.packb([call_id, value])
        self._process.stdin.write(HEADER.pack(len(body)) + body)
        if self._process.stdin.transport.get_write_buffer_size() > 1 << 20:
            await self._process.stdin.drain()
        return await future

    async def burst(self, count: int, in_flight: int) -> None:
        await gather_bounded(self.call, count, in_flight)

    def worker_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            await self._process.wait()


async def _read_frame(stream: asyncio.StreamReader) -> bytes:
    (size,) = HEADER.unpack(await stream.readexactly(4))
    return await stream.readexactly(size)


async def bare_child_spawn() -> tuple[float, int]:
    """Seconds from spawn to the bare child's first frame; its pid (still running: close its stdin)."""
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BARE_CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None and process.stdin is not None
    await _read_frame(process.stdout)
    elapsed = time.perf_counter() - began
    _LIVE.append(process)
    return elapsed, process.pid


_LIVE: list[asyncio.subprocess.Process] = []


async def close_bare_children() -> None:
    while _LIVE:
        process = _LIVE.pop()
        if process.stdin is not None:
            process.stdin.close()
        await process.wait()


def cpu_seconds() -> float:
    """This process's CPU time, all threads, user + system (os.times() ticks only every 10 ms)."""
    return time.process_time()
