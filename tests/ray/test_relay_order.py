"""The order of what a Ray-launched worker wrote: batches come back on the standing read's
reply or on a write's, in any order, and are handed on in the order the relay numbered them.
Pure logic (no cluster): the relay's real traffic is in test_ray_launcher.py."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.launchers.ray import RayWorker


class Recorder(asyncio.Protocol):
    def __init__(self, seen: list[tuple[str, Any]], name: str) -> None:
        self.seen, self.name = seen, name

    def data_received(self, data: bytes) -> None:
        self.seen.append((self.name, data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.seen.append((self.name, "closed"))


def worker_for(seen: list[tuple[str, Any]]) -> RayWorker:
    worker = RayWorker.__new__(RayWorker)  # only the delivery state: no actor, no launcher
    worker._exited = False
    worker._streams = {"out": Recorder(seen, "out"), "err": Recorder(seen, "err")}
    worker._open = {"out", "err"}
    worker._on_exit = lambda code, reason: seen.append(("exit", code))
    worker._on_usage = lambda usage: seen.append(("usage", usage.rss))
    worker._next_batch = 0
    worker._held = {}
    return worker


BATCHES = [
    [("out", b"a"), ("err", b"x")],
    [("usage", 10, 0.1, 1), ("out", b"b")],
    [("out", b"c"), ("out_eof",), ("err_eof",)],
    [("exit", 0)],
]
IN_ORDER = [("out", b"a"), ("err", b"x"), ("usage", 10), ("out", b"b"), ("out", b"c"), ("out", "closed"), ("err", "closed"), ("exit", 0)]


@settings(max_examples=50, deadline=None)
@given(st.permutations(range(len(BATCHES))), st.lists(st.integers(0, 3), max_size=6))
def test_batches_are_handed_on_in_their_order_whatever_order_they_arrive(order: list[int], empties: list[int]) -> None:
    seen: list[tuple[str, Any]] = []
    worker = worker_for(seen)
    arrivals: list[tuple[int | None, list[Any]]] = [(number, BATCHES[number]) for number in order]
    for position in empties:  # replies of writes that brought nothing back
        arrivals.insert(min(position, len(arrivals)), (None, []))
    for batch in arrivals:
        worker._deliver(batch)
    assert seen == IN_ORDER


def test_nothing_is_handed_on_after_the_exit() -> None:
    seen: list[tuple[str, Any]] = []
    worker = worker_for(seen)
    for number, events in zip(itertools.count(), [[("exit", 3)], [("out", b"late")]], strict=False):
        worker._deliver((number, events))
    assert seen == [("out", "closed"), ("err", "closed"), ("exit", 3)]
