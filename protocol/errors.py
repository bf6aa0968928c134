"""The one exception the protocol layer raises.

Everything that can go wrong while turning bytes into messages (a length over
the limit, a truncated body, bytes that are not msgpack, a message of the
wrong shape, a version we do not speak) is reported as `ProtocolError`, with
the low-level cause chained. Callers never need to catch msgpack's exceptions.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Malformed or unexpected input on the wire."""
