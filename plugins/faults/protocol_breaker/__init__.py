"""Fault: a plugin that reaches past the SDK and writes to the protocol itself.

fd 1 is harmless inside a worker (it is stderr), so this plugin digs the real
protocol writer out of the garbage collector and writes malformed frames with
it: exactly what a buggy C extension or a hostile plugin could do. The
supervisor must kill the worker, fail the call with ProtocolError, and restart.

`at_limit` is the control: a well-formed frame exactly as large as the limit
must go through. `forged_result` answers its own call twice (the second answer
is the violation). `asleep` keeps calls in flight while another call breaks
the protocol.
"""

import asyncio
import gc
import struct

import msgpack

from worker.sdk import NekoPluginBase, plugin_entry


def _protocol_writer():
    for obj in gc.get_objects():
        if type(obj).__name__ == "BlockingWriter":
            return obj
    raise RuntimeError("no protocol writer found")


def _dispatcher():
    for obj in gc.get_objects():
        if type(obj).__name__ == "Dispatcher":
            return obj
    raise RuntimeError("no dispatcher found")


def _log_body(size):
    """A msgpack `log` message exactly `size` bytes long (msgpack's length
    prefixes grow in steps, so the logger name takes up the slack)."""
    for pad in range(4):
        logger = "protocol_breaker" + "." * pad
        length = size
        for _ in range(4):
            body = msgpack.packb(["log", 20, logger, "x" * length])
            if len(body) == size:
                return body
            length -= len(body) - size
    raise ValueError(f"cannot build a log message of exactly {size} bytes")


class ProtocolBreakerPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="asleep", description="Await asyncio.sleep(`seconds`), then return `seconds`.")
    async def asleep(self, seconds: float, **_):
        await asyncio.sleep(seconds)
        return seconds

    @plugin_entry(id="at_limit", description="A well-formed log frame exactly as large as the limit.")
    def at_limit(self, **_):
        writer = _protocol_writer()
        body = _log_body(writer.max_frame_size)
        writer.write_frame(struct.pack(">I", len(body)) + body)
        return len(body)

    @plugin_entry(id="over_limit", description="A well-formed log frame one byte over the limit.")
    def over_limit(self, **_):
        writer = _protocol_writer()
        body = _log_body(writer.max_frame_size + 1)
        writer.write_frame(struct.pack(">I", len(body)) + body)
        return len(body)

    @plugin_entry(id="huge_header", description="A length prefix of 4 GiB - 1.")
    def huge_header(self, **_):
        _protocol_writer().write_frame(b"\xff\xff\xff\xff")
        return "sent"

    @plugin_entry(id="garbage", description="A well-framed body that is not msgpack.")
    def garbage(self, **_):
        body = b"\xc1\xc1\xc1"  # 0xc1 is never used in msgpack
        _protocol_writer().write_frame(struct.pack(">I", len(body)) + body)
        return "sent"

    @plugin_entry(id="wrong_shape", description="Valid msgpack that is no message.")
    def wrong_shape(self, **_):
        body = msgpack.packb({"not": "a message"})
        _protocol_writer().write_frame(struct.pack(">I", len(body)) + body)
        return "sent"

    @plugin_entry(id="unknown_call_id", description="A result for a call that was never made.")
    def unknown_call_id(self, **_):
        body = msgpack.packb(["result", 987654321, True, None])
        _protocol_writer().write_frame(struct.pack(">I", len(body)) + body)
        return "sent"

    @plugin_entry(id="forged_result", description="Answer its own call twice: a forged result, then the real one.")
    async def forged_result(self, **_):
        # Async, so the dispatcher has recorded the call before the entry runs.
        (call_id,) = _dispatcher().in_flight  # this call is the only one in flight
        body = msgpack.packb(["result", call_id, True, "forged"])
        _protocol_writer().write_frame(struct.pack(">I", len(body)) + body)
        return "real"
