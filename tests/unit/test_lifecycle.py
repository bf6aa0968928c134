"""The two state machines: `check_move` accepts exactly the moves in the tables."""

from __future__ import annotations

import enum
import itertools

import pytest

from supervisor.lifecycle import (
    PLUGIN_MOVES,
    WORKER_MOVES,
    IllegalTransition,
    PluginState,
    WorkerState,
    check_move,
)

TABLES = [(WORKER_MOVES, WorkerState), (PLUGIN_MOVES, PluginState)]


def all_pairs() -> list[object]:
    return [
        pytest.param(table, current, new, id=f"{states.__name__}.{current.name}->{new.name}")
        for table, states in TABLES
        for current, new in itertools.product(list(states), repeat=2)
    ]


def test_every_state_has_a_row() -> None:
    for table, states in TABLES:
        assert set(table) == set(states)
        assert all(targets <= set(states) for targets in table.values())


@pytest.mark.parametrize(("table", "current", "new"), all_pairs())
def test_check_move_follows_the_table(table: dict, current: enum.Enum, new: enum.Enum) -> None:
    if new in table[current]:
        assert check_move(table, current, new) is new
    else:
        with pytest.raises(IllegalTransition) as info:
            check_move(table, current, new)
        assert current.value in str(info.value)
        assert new.value in str(info.value)


def test_worker_table_is_the_documented_one() -> None:
    documented = {  # STYLE.md, "State as data"
        WorkerState.STARTING: {WorkerState.READY, WorkerState.STOPPING, WorkerState.DEAD},
        WorkerState.READY: {WorkerState.STOPPING, WorkerState.DEAD},
        WorkerState.STOPPING: {WorkerState.DEAD},
        WorkerState.DEAD: set(),
    }
    assert documented == WORKER_MOVES


def test_dead_is_final() -> None:
    for state in WorkerState:
        with pytest.raises(IllegalTransition):
            check_move(WORKER_MOVES, WorkerState.DEAD, state)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("stopped", "starting"),
        ("starting", "running"),
        ("running", "starting"),  # crash, restart
        ("starting", "backoff"),
        ("backoff", "starting"),
        ("backoff", "failed"),
        ("running", "stopped"),
        ("failed", "starting"),  # restart()
    ],
)
def test_plugin_moves_drawn_in_the_docstring_are_allowed(current: str, new: str) -> None:
    assert check_move(PLUGIN_MOVES, PluginState(current), PluginState(new)) == new


@pytest.mark.parametrize(("current", "new"), [("stopped", "running"), ("failed", "running"), ("backoff", "running"), ("stopped", "backoff")])
def test_plugin_cannot_skip_starting(current: str, new: str) -> None:
    with pytest.raises(IllegalTransition):
        check_move(PLUGIN_MOVES, PluginState(current), PluginState(new))


def test_illegal_transition_is_a_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)


def test_plugin_state_compares_equal_to_its_string() -> None:
    assert PluginState.RUNNING == "running"
    assert str(PluginState.RUNNING) == "running"
    assert f"{PluginState.FAILED}" == "failed"
    assert PluginState("backoff") is PluginState.BACKOFF
    assert {state.value for state in PluginState} == {"starting", "running", "backoff", "failed", "stopped"}
