"""Fault injection for one plugin: what a test asks for, and the record of what happened.

    chaos = sup.chaos("persistent")
    chaos.kill_next_call("in_entry")          # the next call's worker dies while its entry runs
    chaos.freeze(2.0)                          # SIGSTOP the worker for 2 s
    chaos.delay("from_worker", 0.2, jitter=0.1)
    chaos.drop_next("to_worker")               # the next frame to the worker is never written
    chaos.corrupt_next("from_worker")          # the next frame from the worker is garbage
    chaos.fail_spawns(3)                       # the next 3 starts fail
    chaos.injections                           # what was injected, when, into which call

The plugin's slot owns one `PluginChaos` for its whole life (across workers);
each worker's handle asks it at the points where a fault can land. Nothing
here acts on a process itself: the handle does, so every fault goes through
the same paths a real one would.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from protocol import Message


class Phase(enum.StrEnum):
    """Where in a call's life `kill_next_call` strikes."""

    BEFORE_DELIVERY = "before_delivery"  # the call never reaches the plugin
    IN_ENTRY = "in_entry"                # the entry has started; its result never leaves the worker
    BEFORE_RESULT = "before_result"      # the entry returned; its result reaches the supervisor, not the caller


class Direction(enum.StrEnum):
    TO_WORKER = "to_worker"
    FROM_WORKER = "from_worker"


@dataclass(frozen=True, slots=True)
class Injection:
    """One fault that landed. `at` is time.monotonic()."""

    kind: str
    at: float
    detail: str = ""
    call_id: int | None = None
    entry_id: str | None = None


@dataclass(slots=True)
class _Delay:
    seconds: float
    jitter: float


class PluginChaos:
    """Faults armed for one plugin. Every method is synchronous and takes effect at
    once (a kill now) or at the next point it names (the next call, frame, start)."""

    def __init__(self, plugin_id: str, seed: int | None = None) -> None:
        self.plugin_id = plugin_id
        self._records: list[Injection] = []
        self._call_faults: list[tuple[Phase, str | None]] = []
        self._drop: dict[Direction, int] = {Direction.TO_WORKER: 0, Direction.FROM_WORKER: 0}
        self._corrupt: dict[Direction, int] = {Direction.TO_WORKER: 0, Direction.FROM_WORKER: 0}
        self._delay: dict[Direction, _Delay | None] = {Direction.TO_WORKER: None, Direction.FROM_WORKER: None}
        self._failed_spawns = 0
        self._random = random.Random(seed)
        # False until a frame fault or delay is first armed: until then handles skip the tap.
        self.touches_frames = False
        # Set by the slot: acts on the current worker (kill, freeze, thaw), and names
        # the plugin's entries once a worker has reported them.
        self._act: Callable[[str, float | None], bool] | None = None
        self._entries: Callable[[], Collection[str]] = tuple

    # -- what a test asks for ------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the current worker (and its tree) now."""
        self._now("kill")

    def freeze(self, seconds: float | None = None) -> None:
        """SIGSTOP the current worker's tree; SIGCONT after `seconds` (None: until `thaw()`)."""
        if seconds is not None:
            _check_seconds("seconds", seconds)
        self._now("freeze", seconds)

    def thaw(self) -> None:
        self._now("thaw")

    def kill_next_call(self, phase: Phase | str = Phase.IN_ENTRY, entry: str | None = None) -> None:
        """Kill the worker at `phase` of the next call (of `entry`, if given). Several
        arm several calls, in order."""
        phase = Phase(phase)
        known = self._entries()
        if entry is not None and known and entry not in known:
            raise ValueError(f"plugin {self.plugin_id!r} has no entry {entry!r} (entries: {', '.join(sorted(known))})")
        self._call_faults.append((phase, entry))

    def delay(self, direction: Direction | str, seconds: float, jitter: float = 0.0) -> None:
        """Hold every frame in `direction` for `seconds` plus up to `jitter` more (random,
        seeded), keeping their order. `delay(direction, 0)` ends it."""
        _check_seconds("seconds", seconds)
        _check_seconds("jitter", jitter)
        direction = Direction(direction)
        self._delay[direction] = _Delay(seconds, jitter) if seconds or jitter else None
        self.touches_frames = True
        self.record("delay", f"{direction.value}: {seconds:g} s" + (f" + up to {jitter:g} s" if jitter else "") if seconds or jitter else f"{direction.value}: ended")

    def drop_next(self, direction: Direction | str, count: int = 1) -> None:
        """The next `count` frames in `direction` are lost (never written / never read)."""
        self._drop[Direction(direction)] += _check_count(count)
        self.touches_frames = True

    def corrupt_next(self, direction: Direction | str, count: int = 1) -> None:
        """The next `count` frames in `direction` arrive as garbage."""
        self._corrupt[Direction(direction)] += _check_count(count)
        self.touches_frames = True

    def fail_spawns(self, count: int) -> None:
        """The next `count` starts of a worker fail (exercises backoff and the restart budget)."""
        self._failed_spawns += _check_count(count)

    def clear(self) -> None:
        """Disarm everything still pending (the record stays)."""
        self._call_faults.clear()
        for direction in Direction:
            self._drop[direction] = self._corrupt[direction] = 0
            self._delay[direction] = None
        self._failed_spawns = 0

    @property
    def injections(self) -> tuple[Injection, ...]:
        return tuple(self._records)

    @property
    def armed(self) -> bool:
        """Anything still waiting to land (delays count as armed while they last)."""
        return bool(
            self._call_faults or self._failed_spawns or any(self._drop.values()) or any(self._corrupt.values())
            or any(self._delay.values())
        )

    # -- what a worker handle asks ---------------------------------------------------
    def record(self, kind: str, detail: str = "", call_id: int | None = None, entry_id: str | None = None) -> None:
        self._records.append(Injection(kind, time.monotonic(), detail, call_id, entry_id))

    def take_call_fault(self, entry_id: str) -> tuple[Phase, str | None] | None:
        """The fault armed for the next call of `entry_id`, with the entry it was armed for."""
        for index, (phase, entry) in enumerate(self._call_faults):
            if entry is None or entry == entry_id:
                del self._call_faults[index]
                return phase, entry
        return None

    def rearm_call_fault(self, phase: Phase, entry: str | None) -> None:
        """A call fault that could not land (the entry never ran): first in line again."""
        self._call_faults.insert(0, (phase, entry))

    def take_frame_fault(self, direction: Direction) -> str | None:
        """"drop", "corrupt" or None for the next frame in `direction`."""
        if self._drop[direction]:
            self._drop[direction] -= 1
            return "drop"
        if self._corrupt[direction]:
            self._corrupt[direction] -= 1
            return "corrupt"
        return None

    def frame_delay(self, direction: Direction) -> float:
        delay = self._delay[direction]
        if delay is None:
            return 0.0
        return delay.seconds + (self._random.uniform(0, delay.jitter) if delay.jitter else 0.0)

    def take_spawn_failure(self) -> bool:
        if self._failed_spawns:
            self._failed_spawns -= 1
            return True
        return False

    def _now(self, action: str, seconds: float | None = None) -> None:
        if self._act is None or not self._act(action, seconds):
            raise RuntimeError(f"plugin {self.plugin_id!r} has no running worker to {action}")


def _check_seconds(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def _check_count(count: int) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    return count


# Where a corrupted frame to the worker comes from: a well-formed length and a
# body that is no msgpack at all (0xc1 is never used), so the worker's decoder fails.
CORRUPT_FRAME = b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1"


class FrameTap:
    """Puts one plugin's chaos between a worker handle and its pipes: drops,
    corrupts and delays frames in each direction, keeping their order."""

    def __init__(
        self,
        chaos: PluginChaos,
        loop: asyncio.AbstractEventLoop,
        write: Callable[[bytes], None],
        deliver: Callable[[Message], None],
        corrupted: Callable[[str], None],
    ) -> None:
        self.chaos = chaos
        self._loop = loop
        self._write = write
        self._deliver = deliver
        self._corrupted = corrupted
        self._held: dict[Direction, collections.deque[tuple[float, Callable[[], None]]]] = {
            direction: collections.deque() for direction in Direction
        }
        self._timers: dict[Direction, asyncio.TimerHandle | None] = dict.fromkeys(Direction)

    def outgoing(self, data: bytes, what: str, call_id: int | None = None) -> None:
        fault = self.chaos.take_frame_fault(Direction.TO_WORKER)
        if fault == "drop":
            self.chaos.record("drop", f"{what} to the worker never written", call_id)
            return
        if fault == "corrupt":
            self.chaos.record("corrupt", f"{what} to the worker replaced by garbage", call_id)
            data = CORRUPT_FRAME
        self._pass(Direction.TO_WORKER, lambda: self._write(data))

    def incoming(self, message: Message) -> None:
        fault = self.chaos.take_frame_fault(Direction.FROM_WORKER)
        name = type(message).__name__.lower()
        call_id = getattr(message, "call_id", None)
        if fault == "drop":
            self.chaos.record("drop", f"{name} from the worker never read", call_id)
            return
        if fault == "corrupt":
            self.chaos.record("corrupt", f"{name} from the worker read as garbage", call_id)
            self._corrupted(f"chaos: a corrupted {name} frame")
            return
        self._pass(Direction.FROM_WORKER, lambda: self._deliver(message))

    def _pass(self, direction: Direction, action: Callable[[], None]) -> None:
        delay = self.chaos.frame_delay(direction)
        held = self._held[direction]
        if not delay and not held:
            action()
            return
        # Never before a frame held earlier: the order of frames is the protocol's.
        release = max(self._loop.time() + delay, held[-1][0] if held else 0.0)
        held.append((release, action))
        if self._timers[direction] is None:
            self._timers[direction] = self._loop.call_at(held[0][0], self._release, direction)

    def _release(self, direction: Direction) -> None:
        self._timers[direction] = None
        held = self._held[direction]
        now = self._loop.time()
        while held and held[0][0] <= now:
            held.popleft()[1]()
        if held:
            self._timers[direction] = self._loop.call_at(held[0][0], self._release, direction)

    def flush_incoming(self) -> None:
        """The worker is dead: hand over, in order, what it had sent and a delay still holds."""
        held = self._held[Direction.FROM_WORKER]
        while held:
            held.popleft()[1]()

    def close(self) -> None:
        """The worker is dead: frames held on their way to it are lost, as in a closed pipe."""
        for direction in Direction:
            timer = self._timers[direction]
            if timer is not None:
                timer.cancel()
            self._timers[direction] = None
            self._held[direction].clear()
