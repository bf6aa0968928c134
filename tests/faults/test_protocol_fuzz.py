"""Fuzz the supervisor's side of the protocol through a real worker that writes raw bytes.

In each example the raw_writer plugin puts hypothesis-drawn bytes onto its
protocol stream, in one write or in pieces the supervisor reads one by one,
while another call waits on the same worker. A model of the
supervisor's reader predicts what both callers see: the sans-I/O decoder (unit
tested on its own) says whether the bytes are whole, well-formed messages, and
the rule below says which messages a running worker may send at all.

- Only `log`, `ping` and `pong`, at frame boundaries: the call returns and the
  worker keeps running (or, told to exit after writing, `WorkerCrashed` with
  its exit code).
- Anything else - a length over the limit (up to 4 GiB), a body that is not
  msgpack, msgpack of the wrong shape, a second `hello`, a `ready`, a `fatal`,
  a `call`, a result for a call id never issued, a stream that ends inside a
  frame - is `ProtocolError` for both callers, and a new worker.

A stream left inside a frame by a worker that goes on living is a slow writer
as far as anyone can tell (test_protocol_faults.py covers it: CallTimeout,
then a kill); here such bytes are always followed by the worker's exit.

One supervisor serves every example (a restart costs about 0.1 s; a new
supervisor would cost more), on pytest-asyncio's loop for this test, which runs
each example's coroutine in turn. After every example the plugin answers
again, it was restarted exactly when its worker was lost, and another plugin
of the same supervisor was never touched. `--hypothesis-show-statistics`
shows how the examples split between the outcomes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    ERROR_KINDS,
    Call,
    Cancel,
    EntryInfo,
    ErrorInfo,
    Fatal,
    FrameDecoder,
    Hello,
    Log,
    Message,
    Ping,
    Pong,
    Ready,
    Result,
    Shutdown,
    decode_message,
    unpack,
)
from supervisor import PluginError, ProtocolError, Supervisor, WorkerCrashed
from tests.faults.helpers import supervising, wait_for
from tests.unit.strategies import msgpack_values

LIMIT = 64 * 1024
RAW_WRITER_EXIT_CODE = 17  # plugins/faults/raw_writer
HARMLESS = (Log, Ping, Pong)  # what a running worker may send besides results for its calls
# No test makes anywhere near this many calls: a result with an id from here up
# could answer a real call (or one already answered), and is left out.
FIRST_NEVER_ISSUED_ID = 2**40

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # every int msgpack carries
TEXT = st.text(max_size=16)
TAGS = ("hello", "ready", "fatal", "call", "result", "cancel", "log", "ping", "pong", "shutdown")


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def frame_of(message: Message) -> bytes:
    return protocol.encode_message(message, LIMIT)


never_issued_ids = st.integers(min_value=-(2**63), max_value=0) | st.integers(min_value=FIRST_NEVER_ISSUED_ID, max_value=2**64 - 1)
errors = st.builds(ErrorInfo, kind=st.sampled_from(sorted(ERROR_KINDS)), type=TEXT, message=TEXT, traceback=TEXT)

harmless_messages = st.one_of(
    st.builds(Log, level=INT64, logger=TEXT, text=TEXT),
    st.builds(Ping, nonce=INT64),
    st.builds(Pong, nonce=INT64),
)
out_of_place_messages = st.one_of(
    st.builds(Hello, version=INT64, pid=INT64, protections=st.dictionaries(TEXT, INT64 | TEXT, max_size=3)),
    st.builds(Ready, entries=st.lists(st.builds(EntryInfo, id=TEXT, description=TEXT), max_size=3).map(tuple)),
    st.builds(Fatal, error=errors),
    st.builds(Call, call_id=INT64, entry_id=TEXT, args=st.dictionaries(TEXT, INT64, max_size=3)),
    st.builds(Cancel, call_id=INT64),
    st.builds(Shutdown, grace=st.floats(min_value=0, max_value=1e9)),
    st.builds(Result, call_id=never_issued_ids, ok=st.just(True), value=msgpack_values),
    st.builds(lambda call_id, error: Result(call_id, False, None, error), never_issued_ids, errors),
)


@st.composite
def truncated_frames(draw: st.DrawFn) -> bytes:
    whole = frame_of(draw(harmless_messages | out_of_place_messages))
    return whole[: draw(st.integers(min_value=1, max_value=len(whole) - 1))]


garbage = st.one_of(
    st.binary(min_size=1, max_size=64),  # anything: mostly a length that is nonsense
    st.binary(max_size=64).map(framed),  # a fitting length, a body that is anything
    st.builds(lambda length, tail: struct.pack(">I", length) + tail,  # over the limit, up to 4 GiB - 1
              st.integers(min_value=LIMIT + 1, max_value=2**32 - 1), st.binary(max_size=16)),
    st.builds(lambda tail: struct.pack(">I", LIMIT + 1) + tail, st.binary(max_size=16)),  # one byte over
    msgpack_values.map(lambda value: framed(protocol.pack(value))),  # msgpack of any shape
    st.builds(lambda tag, items: framed(protocol.pack([tag, *items])),  # a real tag, the wrong items
              st.sampled_from(TAGS), st.lists(msgpack_values, max_size=5)),
    truncated_frames(),
)
fragments = st.one_of(
    harmless_messages.map(frame_of),
    out_of_place_messages.map(frame_of),
    garbage,
)
# Half the streams are all harmless (else nearly every stream would hold something fatal).
streams = st.one_of(st.lists(harmless_messages.map(frame_of), max_size=4), st.lists(fragments, min_size=1, max_size=4)).map(b"".join)


@st.composite
def writes(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A stream, and where the worker cuts it into separately written pieces."""
    data = draw(streams)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=3, unique=True))
    return data, sorted(cuts)


@dataclass(frozen=True)
class Reading:
    """What the supervisor's reader makes of a stream, however the pipe chunks it."""

    messages: list[Message]  # the messages before the stream broke, if it did
    broken: bool             # a frame or message was malformed
    pending: int             # bytes of an unfinished frame at the end


def read(data: bytes) -> Reading:
    # Byte by byte, so a message completed before a malformed frame counts: a
    # pipe may deliver it in a read of its own.
    frames = FrameDecoder(LIMIT)
    messages: list[Message] = []
    for offset in range(len(data)):
        try:
            messages += [decode_message(unpack(body)) for body in frames.feed(data[offset : offset + 1])]
        except protocol.ProtocolError:
            return Reading(messages, broken=True, pending=0)
    return Reading(messages, broken=False, pending=frames.pending)


def could_answer_a_real_call(reading: Reading) -> bool:
    """A well-formed result with a small id (drawn as arbitrary msgpack) might answer a real call."""
    return any(isinstance(m, Result) and 0 < m.call_id < FIRST_NEVER_ISSUED_ID for m in reading.messages)


def predict(reading: Reading, then: str) -> str:
    """What the callers should see when the worker writes the stream, then returns or exits."""
    if reading.broken or not all(isinstance(message, HARMLESS) for message in reading.messages):
        return "protocol error"
    if reading.pending:
        assert then == "exit"  # see the module docstring
        return "protocol error"
    return "returned" if then == "return" else "crashed"


def outcome(result: Any) -> str:
    if isinstance(result, ProtocolError):
        return "protocol error"
    if isinstance(result, WorkerCrashed):
        assert result.returncode == RAW_WRITER_EXIT_CODE, result
        return "crashed"
    if isinstance(result, PluginError):
        return f"{type(result).__name__}: {result}"  # never predicted: the assertion shows it
    if isinstance(result, BaseException):
        raise AssertionError(f"a caller got something other than a PluginError: {result!r}") from result
    return "returned"


@pytest_asyncio.fixture
async def sup(tmp_path: Path, no_leaks: None) -> AsyncIterator[Supervisor]:
    runtime = {"raw_writer": {"max_restarts": 100_000}}
    async with supervising(tmp_path, ["raw_writer", "echo"], runtime, max_frame_size=LIMIT) as sup:
        bystander = sup.status("echo").pid
        yield sup
        # Another plugin of the same supervisor never noticed.
        assert (sup.status("echo").pid, sup.status("echo").restarts) == (bystander, 0)


# About 15 s when it passes; the timeout leaves room to shrink a failing example.
@pytest.mark.timeout(180)
@settings(max_examples=100, deadline=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(write=writes(), exit_after=st.booleans())
async def test_raw_bytes_from_a_worker_give_protocol_error_or_nothing_and_the_plugin_comes_back(
    sup: Supervisor, write: tuple[bytes, list[int]], exit_after: bool
) -> None:
    data, cuts = write
    reading = read(data)
    assume(not could_answer_a_real_call(reading))
    then = "exit" if exit_after or reading.pending else "return"
    expected = predict(reading, then)
    event(expected)

    async with asyncio.timeout(5):  # each step takes well under a second
        assert await sup.call("raw_writer", "echo", {"value": "before"}) == "before"
        restarts = sup.status("raw_writer").restarts
        bystander = asyncio.create_task(sup.call("raw_writer", "asleep", {"seconds": 30}, timeout=60))
        await wait_for(lambda: sup.status("raw_writer").in_flight == 1)
        (written,) = await asyncio.gather(sup.call("raw_writer", "write", {"data": data, "then": then, "cuts": cuts}), return_exceptions=True)
        if not isinstance(written, BaseException):
            bystander.cancel()  # the worker lives on: the bystander would wait its 30 s
        (beside,) = await asyncio.gather(bystander, return_exceptions=True)

        assert outcome(written) == expected, (then, written)
        if expected == "returned":
            assert written == len(data)
            assert isinstance(beside, asyncio.CancelledError)
        else:
            assert outcome(beside) == expected, (then, beside)

        # The plugin comes back (calls wait for the new worker), one restart per worker lost.
        assert await sup.call("raw_writer", "echo", {"value": "after"}) == "after"
        status = sup.status("raw_writer")
        assert (status.state, status.restarts) == ("running", restarts + (expected != "returned"))
