"""The dashboard's data: call history buckets, log positions, the live feed's publishing rule, derived schemas."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any, Literal, Optional

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.logs import PluginLog
from supervisor.service.history import CallHistory
from supervisor.service.live import LiveFeed
from worker.schema import DERIVED_COMMENT, schema_from_signature

SENTINEL = object()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def history(clock: FakeClock, kept: int = 12) -> CallHistory:
    return CallHistory(clock=clock, wall_clock=lambda: 1_700_000_000.0, bucket_seconds=5.0, kept=kept)


# -- CallHistory -------------------------------------------------------------------------
def test_calls_land_in_the_bucket_of_their_end_with_mean_max_and_failures() -> None:
    clock = FakeClock(1000.0)
    calls = history(clock)
    calls.record_call("p", 0.010, failed=False)
    calls.record_call("p", 0.030, failed=True)
    clock.now = 1005.0  # the next bucket
    calls.record_call("p", 0.002, failed=False)
    series = calls.series("p")
    assert [(b["calls"], b["failures"], b["mean_ms"], b["max_ms"]) for b in series] == [(2, 1, 20.0, 30.0), (1, 0, 2.0, 2.0)]
    assert series[1]["t"] - series[0]["t"] == 5.0
    assert series[0]["t"] == pytest.approx(1_700_000_000.0)  # wall-clock labels for the browser's axis


def test_the_series_is_dense_and_never_reaches_before_the_history_began() -> None:
    clock = FakeClock(1000.0)
    calls = history(clock, kept=12)
    assert len(calls.series("p")) == 1  # a young service: one bucket, not twelve of nothing
    clock.now += 5 * 4
    calls.record_call("p", 0.001, failed=False)
    series = calls.series("p")
    assert [b["calls"] for b in series] == [0, 0, 0, 0, 1]
    assert series[0]["mean_ms"] is None  # an empty bucket has no latency, not a zero one
    clock.now += 5 * 100
    assert len(calls.series("p")) == 12 and all(b["calls"] == 0 for b in calls.series("p"))


def test_restarts_count_the_rise_from_the_first_look_and_survive_a_reset() -> None:
    clock = FakeClock()
    calls = history(clock)
    calls.note_restarts("p", 7)  # seen for the first time: a baseline, not seven restarts now
    assert sum(b["restarts"] for b in calls.series("p")) == 0
    calls.note_restarts("p", 9)
    calls.note_restarts("p", 9)
    assert sum(b["restarts"] for b in calls.series("p")) == 2
    calls.note_restarts("p", 0)  # a count that went back (a new supervisor) is no negative restart
    calls.note_restarts("p", 1)
    assert sum(b["restarts"] for b in calls.series("p")) == 3


def test_memory_stays_bounded_however_long_it_runs() -> None:
    clock = FakeClock()
    calls = history(clock, kept=12)
    for _ in range(1000):
        clock.now += 5.0
        calls.record_call("p", 0.001, failed=False)
    assert len(calls._buckets["p"]) == 12
    assert sum(b["calls"] for b in calls.series("p")) == 12


# -- PluginLog positions ------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.one_of(st.integers(min_value=1, max_value=15), st.just(0)), max_size=40),
    limit=st.integers(min_value=0, max_value=12),
)
def test_following_a_log_by_position_never_repeats_and_counts_every_line_it_misses(steps: list[int], limit: int) -> None:
    """A reader that polls with `after` sees each line at most once, in order,
    and every line it does not see is counted in `skipped`."""
    log = PluginLog("p", None, tail_lines=10)
    written: list[str] = []
    read: list[str] = []
    position, skipped = 0, 0
    for step in steps:
        if step:  # the plugin writes `step` lines
            for _ in range(step):
                written.append(f"line {len(written)}")
                log.event(written[-1])
        else:  # the reader polls
            lines, missed = log.after(position, limit)
            read += lines
            skipped += missed
            position = log.appended
    lines, missed = log.after(position, limit)
    read += lines
    skipped += missed
    assert read == [f"[supervisor] {w}" for w in written if f"[supervisor] {w}" in read]  # in order, no repeats
    assert len(set(read)) == len(read)
    assert len(read) + skipped == len(written)
    assert log.after(log.appended, limit) == ([], 0)


def test_a_position_from_before_a_restart_of_the_count_is_not_an_error() -> None:
    log = PluginLog("p", None)
    log.event("one")
    assert log.after(50, 10) == ([], 0)  # a position ahead of the log (another service's): nothing new
    assert log.after(0, 10) == (["[supervisor] one"], 0)


# -- LiveFeed publishing rule --------------------------------------------------------------
async def test_the_feed_publishes_on_a_watched_change_and_not_for_nothing() -> None:
    rows: list[Any] = []
    feed = LiveFeed(lambda: rows, lambda: {"ready": True, "stopping": False}, CallHistory(), refresh_interval=3600)
    stream = feed.snapshots()
    first = await anext(stream)
    assert json.loads(first.split(b"data: ", 1)[1]) == {"service": {"ready": True, "stopping": False}, "plugins": []}
    waiting = asyncio.ensure_future(anext(stream))
    feed.sample()  # nothing changed, and the refresh is an hour away: no event
    await asyncio.sleep(0)
    assert not waiting.done()
    feed._service = lambda: {"ready": True, "stopping": True}
    feed.sample()
    snapshot = await asyncio.wait_for(waiting, 5)
    assert snapshot is not None and b'"stopping":true' in snapshot
    closing = asyncio.ensure_future(anext(stream))
    feed.close()
    last = await asyncio.wait_for(closing, 5)  # one last look though nothing changed, then the end
    assert last is not None and last.startswith(b"event: plugins\n")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 5)


# -- schemas read off signatures -------------------------------------------------------------
def test_a_signature_becomes_an_object_schema() -> None:
    # Quoted on purpose: under `from __future__ import annotations` these arrive quoted twice.
    def entry(url: str, retries: int = 3, ratio: float | None = None, verbose: bool = False,
              tags: list[str] | None = None, options: "dict[str, int] | None" = None,  # noqa: UP037
              level: "Optional[int]" = 1, anything=SENTINEL, **_: Any) -> None: ...  # noqa: UP037, UP045

    schema = schema_from_signature(inspect.signature(entry))
    assert schema == {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "retries": {"type": "integer", "default": 3},
            "ratio": {"type": "number"},
            "verbose": {"type": "boolean", "default": False},
            "tags": {"type": "array"},
            "options": {"type": "object"},
            "level": {"type": "integer", "default": 1},
            "anything": {},
        },
        "required": ["url"],
        "$comment": DERIVED_COMMENT,
    }


def test_a_literal_becomes_an_enum() -> None:
    def entry(unit: Literal["C", "F"] = "C", mode: Literal[1, 2] | None = None) -> None: ...

    entry.__annotations__.update(unit=Literal["C", "F"], mode=Literal[1, 2] | None)  # objects, not this module's text
    schema = schema_from_signature(inspect.signature(entry))
    assert schema["properties"] == {"unit": {"enum": ["C", "F"], "default": "C"}, "mode": {"enum": [1, 2]}}


def test_a_signature_without_kwargs_closes_the_schema_and_skips_positional_only() -> None:
    def entry(first: int, /, *, key: "str", when: float = float("inf")) -> None: ...  # noqa: UP037

    schema = schema_from_signature(inspect.signature(entry))
    assert schema["properties"] == {"key": {"type": "string"}, "when": {"type": "number"}}  # inf is no JSON default
    assert schema["required"] == ["key"] and schema["additionalProperties"] is False
    json.dumps(schema, allow_nan=False)


def test_what_a_schema_cannot_carry_is_left_out_rather_than_failing() -> None:
    """Annotations used as documentation, and defaults msgpack or a browser cannot
    carry exactly, give a plainer schema, never an error (a start would fail on it)."""
    def entry(choice="a", big=2**70, text="\ud800", fine=2**53):  # type: ignore[no-untyped-def]
        ...

    entry.__annotations__.update(choice=["a", "b"], big=int, text=str, fine=int)  # objects, not this module's text
    schema = schema_from_signature(inspect.signature(entry))
    assert schema["properties"] == {
        "choice": {"default": "a"}, "big": {"type": "integer"}, "text": {"type": "string"}, "fine": {"type": "integer", "default": 2**53},
    }
    msgpack.packb(schema)
