"""Fault: a fake worker inside a real one, for fuzzing the supervisor's side of the protocol.

The worker is real (spawn, handshake, calls all go the normal way), but
`write(data)` puts the caller's bytes on the protocol stream exactly as they
are: garbage, half a frame, a frame of the wrong kind, several frames. It digs
the worker's protocol writer out of the garbage collector, as protocol_breaker
does, and uses `write_frame`, which writes its argument unchanged.

- `write(data, then="return")`: write `data`, then return `len(data)`; the
  worker's own result frame follows `data` on the stream.
- `write(data, then="exit")`: write `data`, then end the process at once with
  `EXIT_CODE`, so the stream ends right after `data` (a frame cut short stays cut).
- `write(data, then="close")`: write `data`, then end the stream but not the
  process: the worker lives on with its protocol output pointed at /dev/null.
- `write(data, cuts=[...])`: write `data` in pieces cut at those offsets, with a
  short pause between them, so the supervisor sees them in separate reads. (No
  other frame of this plugin's slips in between, unless another call writes one.)
- `echo(value)`: `value` unchanged, the "is it back" probe; `asleep(seconds)`
  keeps a call in flight beside the one that writes.
- A file `startup.bin` beside plugin.toml is written the same way while the
  plugin is imported, before the worker's `ready`, and deleted first, so only
  one worker writes it.
"""

import asyncio
import gc
import itertools
import os
import time
from pathlib import Path

from worker.sdk import NekoPluginBase, plugin_entry

EXIT_CODE = 17  # not 0: a clean exit would read as "the plugin chose to stop"
PAUSE = 0.002   # seconds between the pieces of one write


def _protocol_writer():
    for obj in gc.get_objects():
        if type(obj).__name__ == "BlockingWriter":
            return obj
    raise RuntimeError("no protocol writer found")


def _close_stream(writer):
    # /dev/null over the protocol fd: the supervisor sees EOF, and whatever the
    # worker writes afterwards (this call's result too) goes nowhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, writer.fd, inheritable=False)
    finally:
        os.close(devnull)


def _write_startup_bytes():
    path = Path(__file__).resolve().parent / "startup.bin"
    if path.exists():
        data = path.read_bytes()
        path.unlink()
        _protocol_writer().write_frame(data)


_write_startup_bytes()


class RawWriterPlugin(NekoPluginBase):
    @plugin_entry(id="echo", description="Return `value` unchanged.")
    def echo(self, value, **_):
        return value

    @plugin_entry(id="asleep", description="Await asyncio.sleep(`seconds`), then return `seconds`.")
    async def asleep(self, seconds: float, **_):
        await asyncio.sleep(seconds)
        return seconds

    @plugin_entry(id="write", description="Write `data` raw onto the protocol stream; then return, exit or close the stream.")
    def write(self, data: bytes, then: str = "return", cuts=(), **_):
        if then not in ("return", "exit", "close"):
            raise ValueError(f"then must be 'return', 'exit' or 'close', got {then!r}")
        writer = _protocol_writer()
        points = [0, *sorted(cuts), len(data)]
        for index, (start, end) in enumerate(itertools.pairwise(points)):
            if index:
                time.sleep(PAUSE)  # let the supervisor read the piece before on its own
            writer.write_frame(bytes(data[start:end]))
        if then == "exit":
            os._exit(EXIT_CODE)
        if then == "close":
            _close_stream(writer)
        return len(data)
