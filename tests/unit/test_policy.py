"""Restart budget (with a fake clock) and the backoff between failed starts."""

from __future__ import annotations

import time

import pytest

from supervisor.policy import BACKOFF_INITIAL, BACKOFF_MAX, Backoff, RestartBudget


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_five_crashes_are_allowed_and_the_sixth_spends_the_budget(clock: FakeClock) -> None:
    budget = RestartBudget(max_restarts=5, window=60, clock=clock)
    for n in range(1, 6):
        assert budget.record_crash() is True, f"crash {n}"
        assert budget.recent_crashes == n
        clock.advance(10)
    # crash 6 at t+50 s: all six are within 60 s
    assert budget.record_crash() is False
    assert budget.recent_crashes == 6


def test_the_sixth_crash_just_inside_the_window_spends_it(clock: FakeClock) -> None:
    budget = RestartBudget(max_restarts=5, window=60, clock=clock)
    assert budget.record_crash()
    clock.advance(59.9)
    for _ in range(4):
        assert budget.record_crash()
    assert budget.record_crash() is False


def test_a_spent_budget_stays_spent_while_crashes_keep_coming(clock: FakeClock) -> None:
    budget = RestartBudget(max_restarts=2, window=60, clock=clock)
    assert [budget.record_crash() for _ in range(5)] == [True, True, False, False, False]


def test_crashes_older_than_the_window_are_forgotten(clock: FakeClock) -> None:
    budget = RestartBudget(max_restarts=5, window=60, clock=clock)
    for _ in range(5):
        assert budget.record_crash()
    clock.advance(61)
    assert budget.record_crash() is True
    assert budget.recent_crashes == 1


def test_the_window_slides(clock: FakeClock) -> None:
    budget = RestartBudget(max_restarts=2, window=60, clock=clock)
    assert budget.record_crash()  # t=0
    clock.advance(40)
    assert budget.record_crash()  # t=40
    clock.advance(30)
    assert budget.record_crash()  # t=70: the t=0 crash is gone, 2 remain
    assert budget.recent_crashes == 2
    clock.advance(5)
    assert budget.record_crash() is False  # t=75: 40, 70, 75 are within 60 s


def test_reset_clears_the_crashes(clock: FakeClock) -> None:
    budget = RestartBudget(max_restarts=5, window=60, clock=clock)
    for _ in range(6):
        budget.record_crash()
    assert budget.recent_crashes == 6
    budget.reset()
    assert budget.recent_crashes == 0
    assert budget.record_crash() is True


def test_no_restarts_allowed(clock: FakeClock) -> None:
    assert RestartBudget(max_restarts=0, window=60, clock=clock).record_crash() is False


def test_default_clock_is_monotonic() -> None:
    # a duration must never come from the wall clock
    assert RestartBudget(5, 60).clock is time.monotonic


# --- backoff -----------------------------------------------------------------------


def test_backoff_delays_grow_within_bounds() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(12)]
    assert backoff.failures == 12
    assert all(BACKOFF_INITIAL <= d <= BACKOFF_MAX for d in delays), delays
    assert delays == sorted(delays), delays
    assert delays[0] <= 2 * BACKOFF_INITIAL
    assert delays[-1] >= BACKOFF_MAX / 2


def test_backoff_bounds_hold_after_many_failures() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(2000)]
    assert max(delays) <= BACKOFF_MAX
    assert min(delays) >= BACKOFF_INITIAL


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff()
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() <= 2 * BACKOFF_INITIAL
    assert backoff.failures == 1


def test_backoff_custom_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=3.0)
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(1.0 <= d <= 4.0 for d in delays), delays
    assert delays[0] <= 2.0
