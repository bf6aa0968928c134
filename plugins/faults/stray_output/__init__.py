"""Fault: a plugin writing to fd 1, which carries the protocol's frames.

Every way a plugin can reach fd 1 is tried: print() and sys.stdout, os.write(1, ...), C's
write(2) and stdio (puts + fflush) through ctypes, and a child process inheriting stdout.
Some of the garbage looks like a frame header (a 4-byte big-endian length), which would
desynchronise the supervisor's decoder if it reached the real pipe. The worker must move
the protocol off fd 1 before importing this module; then every entry returns its value
intact and the noise ends up on stderr (or wherever the worker sends it).
"""

import ctypes
import os
import subprocess
import sys

from worker.sdk import NekoPluginBase, plugin_entry

# Import time: runs while the worker is loading the plugin, before the handshake.
print("stray_output: noise at import time")

# A frame header announcing 5 bytes, then 5 bytes: a well-formed frame whose body is not msgpack.
FAKE_FRAME = b"\x00\x00\x00\x05hello"
# A header announcing ~4 GiB: a decoder that trusted it would wait (or allocate) forever.
HUGE_HEADER = b"\xff\xff\xff\xff"

_libc = ctypes.CDLL(None)  # the C library already linked into the interpreter


class StrayOutputPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        print("stray_output: noise in __init__")

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(
        id="print_noise", description="print() many lines, some shaped like frame headers."
    )
    def print_noise(self, **_):
        for i in range(100):
            print(f"stray_output: line {i}")
        # NUL and \x05 are valid text; encoded as UTF-8 they are the same bytes as FAKE_FRAME.
        print("\x00\x00\x00\x05hello", end="")
        print("\x00\x00\x00\x00")
        sys.stdout.flush()
        return {"ok": True}

    @plugin_entry(id="os_write", description="os.write() straight to fd 1.")
    def os_write(self, **_):
        os.write(1, b"stray_output: os.write\n")
        os.write(1, FAKE_FRAME)
        os.write(1, HUGE_HEADER)
        return {"ok": True}

    @plugin_entry(id="c_write", description="write(2) and puts() from C, through ctypes.")
    def c_write(self, **_):
        _libc.write(1, FAKE_FRAME, len(FAKE_FRAME))
        _libc.write(1, HUGE_HEADER, len(HUGE_HEADER))
        # puts() goes through C's own stdout buffer, which Python's flush does not reach.
        _libc.puts(b"stray_output: puts")
        _libc.fflush(None)
        return {"ok": True}

    @plugin_entry(id="child_echo", description="A child inheriting fd 1, and sys.stdout.buffer.")
    def child_echo(self, **_):
        subprocess.run(["echo", "hi"], check=True)
        sys.stdout.buffer.write(FAKE_FRAME)
        sys.stdout.flush()
        return {"ok": True}

    @plugin_entry(id="long_line", description="One line of `size` 'x' characters on stdout.")
    def long_line(self, size: int = 200_000, **_):
        print("x" * size, flush=True)
        return {"ok": True}
