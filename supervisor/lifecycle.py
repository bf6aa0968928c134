"""The two state machines, kept apart.

One worker process (internal to `WorkerHandle`); DEAD is final, a new process
gets a new handle:

    STARTING --> READY --> STOPPING --> DEAD
        |          |                     ^
        +----------+---------------------+   (crash, kill, failed handshake)

One plugin across its workers (public: `PluginStatus.state`):

    STOPPED --> STARTING --> RUNNING --(crash)--> STARTING ...
                   |  ^         |
     (start fails) v  | (delay) |  (stop_plugin / stop)
                 BACKOFF        +--> STOPPED
                   |
                   v (restart budget spent, or restart = "never")
                 FAILED  --(restart())--> STARTING

`move()` is the only way to change a state; it rejects an illegal move, so a
bug shows up as an error at the point it happens instead of a wrong status.
"""

from __future__ import annotations

import enum
from typing import TypeVar

S = TypeVar("S", bound=enum.Enum)


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    DEAD = "dead"


WORKER_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.READY: frozenset({WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.STOPPING: frozenset({WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}


class PluginState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


PLUGIN_MOVES: dict[PluginState, frozenset[PluginState]] = {
    PluginState.STOPPED: frozenset({PluginState.STARTING, PluginState.FAILED}),
    PluginState.STARTING: frozenset({PluginState.RUNNING, PluginState.BACKOFF, PluginState.FAILED, PluginState.STOPPED}),
    PluginState.RUNNING: frozenset({PluginState.STARTING, PluginState.FAILED, PluginState.STOPPED}),
    PluginState.BACKOFF: frozenset({PluginState.STARTING, PluginState.FAILED, PluginState.STOPPED}),
    PluginState.FAILED: frozenset({PluginState.STARTING, PluginState.STOPPED}),
}


class IllegalTransition(RuntimeError):
    pass


def check_move(moves: dict[S, frozenset[S]], current: S, new: S) -> S:
    if new not in moves[current]:
        raise IllegalTransition(f"illegal state change {current.value} -> {new.value}")
    return new
