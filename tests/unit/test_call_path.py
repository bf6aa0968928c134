"""The slot's call path pieces: the deadline heap and the concurrency places."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.deadlines import COMPACT_AT_LEAST, Deadlines
from supervisor.places import Places

pytestmark = pytest.mark.asyncio


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await event.wait()


# -- deadlines -------------------------------------------------------------------
async def test_deadlines_expire_in_order_and_not_before_their_time() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    seen: list[tuple[str, float]] = []
    done = asyncio.Event()
    start = loop.time()

    def expire(name: str, when: float) -> None:
        seen.append((name, loop.time() - when))
        if len(seen) == 3:
            done.set()

    for name, delay in (("late", 0.06), ("early", 0.02), ("middle", 0.04)):
        deadlines.add(start + delay, expire, name, start + delay)
    await wait_for(done)
    assert [name for name, _ in seen] == ["early", "middle", "late"]
    assert all(lateness >= -1e-6 for _, lateness in seen), seen
    assert len(deadlines) == 0


async def test_a_removed_deadline_never_fires_and_the_next_one_still_does() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    fired: list[str] = []
    done = asyncio.Event()
    first = deadlines.add(loop.time() + 0.01, fired.append, "removed")
    deadlines.add(loop.time() + 0.03, lambda: (fired.append("kept"), done.set()))
    deadlines.remove(first)
    deadlines.remove(first)  # removing twice is harmless
    await wait_for(done)
    assert fired == ["kept"]


async def test_a_removed_deadline_keeps_nothing_alive() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    future: asyncio.Future[None] = loop.create_future()
    entry = deadlines.add(loop.time() + 60, lambda f: None, future)
    deadlines.remove(entry)
    assert entry.args == () and not entry.live


async def test_ended_deadlines_do_not_pile_up() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    keep = deadlines.add(loop.time() + 60, lambda: None)  # one call that never ends
    for _ in range(10_000):
        deadlines.remove(deadlines.add(loop.time() + 60, lambda: None))
    assert len(deadlines._heap) <= 2 * COMPACT_AT_LEAST
    assert keep.live and len(deadlines) == 1
    deadlines.remove(keep)


async def test_a_failing_expiry_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    deadlines = Deadlines()
    done = asyncio.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    when = loop.time() + 0.01
    deadlines.add(when, broken)
    deadlines.add(when, done.set)
    await wait_for(done)
    assert [type(context["exception"]) for context in errors] == [RuntimeError]


# -- places ------------------------------------------------------------------------
async def test_places_are_taken_without_waiting_while_free() -> None:
    places = Places(2)
    assert places.take_now() and places.take_now()
    assert places.locked and not places.take_now()
    places.give_back()
    assert not places.locked and places.take_now()


async def queue_up(places: Places, count: int) -> list[asyncio.Task[None]]:
    """`count` tasks in line for a place, in order; returns once all of them wait."""
    tasks = []
    for _ in range(count):
        queued = asyncio.Event()

        async def take(queued: asyncio.Event = queued) -> None:
            queued.set()  # take() joins the line before its first suspension
            await places.take()

        tasks.append(asyncio.create_task(take()))
        await wait_for(queued)
    return tasks


async def test_a_freed_place_goes_to_the_first_waiter_not_a_newcomer() -> None:
    places = Places(1)
    assert places.take_now()
    tasks = await queue_up(places, 3)
    for index, task in enumerate(tasks):
        places.give_back()
        assert not places.take_now(), "a newcomer overtook the line"
        async with asyncio.timeout(5):
            await task
        assert all(not other.done() for other in tasks[index + 1 :])
    places.give_back()
    assert not places.locked


async def test_a_waiter_cancelled_after_being_handed_a_place_passes_it_on() -> None:
    places = Places(1)
    assert places.take_now()
    first, second = await queue_up(places, 2)
    places.give_back()  # handed to `first`...
    first.cancel()      # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    async with asyncio.timeout(5):
        await second
    places.give_back()
    assert not places.locked


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    places = Places(1)
    assert places.take_now()
    (waiter,) = await queue_up(places, 1)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    places.give_back()
    assert not places.locked and places.take_now()
