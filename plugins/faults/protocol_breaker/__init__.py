"""Fault: a plugin that reaches past the SDK and writes to the protocol itself.

fd 1 is harmless inside a worker (it is stderr), so this plugin digs the real
protocol writer out of the garbage collector and writes malformed frames with
it: exactly what a buggy C extension or a hostile plugin could do. The
supervisor must kill the worker, fail the call with ProtocolError, and restart.
"""

import gc
import struct

import msgpack

from worker.sdk import NekoPluginBase, plugin_entry


def _protocol_writer():
    for obj in gc.get_objects():
        if type(obj).__name__ == "BlockingWriter":
            return obj
    raise RuntimeError("no protocol writer found")


class ProtocolBreakerPlugin(NekoPluginBase):
    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

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
