"""Nothing acknowledged is lost: SIGKILL the persistent plugin's worker again and
again while several clients save, then check every save that returned
`{"saved": True}` in data.db, and that the database is intact.

A save the worker acknowledged has been committed by SQLite before the reply
was sent, so killing the process (not the machine) must never lose it; a save
that failed with `WorkerCrashed` may or may not be in the database (it may have
half-run), and that is all the caller was promised.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervisor import PluginUnavailable, Supervisor, WorkerCrashed
from tests.conftest import PLUGINS, copy_plugins
from tests.faults.helpers import running_worker, set_runtime

pytestmark = pytest.mark.usefixtures("no_leaks")

SEED = 20_241_124
CLIENTS = 4
MIN_KILLS = 40       # the killer goes on until both minimums are met...
MIN_SAVES = 300
MAX_KILLS = 120      # ...or it has killed this many workers
KILL_DELAY = (0.003, 0.05)  # seconds of a fresh worker's life before it is killed
CALL_TIMEOUT = 10.0


@dataclass
class Tally:
    saved: dict[str, str] = field(default_factory=dict)  # acknowledged: key -> value
    crashed: list[str] = field(default_factory=list)     # WorkerCrashed: may have half-run
    unavailable: list[str] = field(default_factory=list)  # PluginUnavailable: never ran
    kills: int = 0
    in_flight_at_kill: list[int] = field(default_factory=list)


async def save_in_a_loop(sup: Supervisor, keys: itertools.count[int], done: asyncio.Event, tally: Tally) -> None:
    while not done.is_set():
        n = next(keys)
        key, value = f"k{n}", f"value of k{n} (seed {SEED})"
        try:
            result = await sup.call("persistent", "save", {"key": key, "value": value}, timeout=CALL_TIMEOUT)
        except WorkerCrashed:
            tally.crashed.append(key)
            continue
        except PluginUnavailable:
            tally.unavailable.append(key)
            continue
        assert result == {"saved": True}, f"seed={SEED}: save of {key} returned {result!r}"
        tally.saved[key] = value


async def kill_repeatedly(sup: Supervisor, rng: random.Random, done: asyncio.Event, tally: Tally) -> None:
    try:
        pid: int | None = None
        while tally.kills < MAX_KILLS and (tally.kills < MIN_KILLS or len(tally.saved) < MIN_SAVES):
            pid = await running_worker(sup, "persistent", pid)
            # The fault schedule: a random moment in the worker's life, not a synchronisation.
            await asyncio.sleep(rng.uniform(*KILL_DELAY))
            status = sup.status("persistent")
            assert status.state == "running" and status.pid == pid, (
                f"seed={SEED}: worker {pid} changed under the killer: {status.state} {status.pid} {status.last_exit}"
            )
            tally.in_flight_at_kill.append(status.in_flight)
            os.kill(pid, signal.SIGKILL)
            tally.kills += 1
    finally:
        done.set()


@pytest.mark.timeout(90)
async def test_every_acknowledged_save_survives_repeated_sigkill(tmp_path: Path) -> None:
    plugins = copy_plugins(PLUGINS, tmp_path / "plugins", ["persistent"])
    set_runtime(plugins / "persistent", max_restarts=1000, restart_window=60)
    rng = random.Random(SEED)
    tally = Tally()
    done = asyncio.Event()
    keys = itertools.count()
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            for _ in range(CLIENTS):
                group.create_task(save_in_a_loop(sup, keys, done, tally))
            group.create_task(kill_repeatedly(sup, rng, done, tally))
        # The plugin is still usable after the storm.
        await running_worker(sup, "persistent", None)
        assert await sup.call("persistent", "save", {"key": "after", "value": "the storm"}, timeout=CALL_TIMEOUT) == {"saved": True}
        tally.saved["after"] = "the storm"
        restarts = sup.status("persistent").restarts

    summary = (
        f"seed={SEED}: {tally.kills} kills, {len(tally.saved)} saves acknowledged, "
        f"{len(tally.crashed)} WorkerCrashed, {len(tally.unavailable)} PluginUnavailable, {restarts} restarts"
    )
    print(summary)
    assert tally.kills >= MIN_KILLS, summary
    assert len(tally.saved) >= MIN_SAVES, summary
    assert restarts >= tally.kills, summary
    # Four clients keep the worker busy, so some kill lands while a save is in flight.
    assert tally.crashed, f"no save was ever cut short by a kill; {summary}"

    db = sqlite3.connect(plugins / "persistent" / "data.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], summary
        stored = dict(db.execute("SELECT key, value FROM records").fetchall())
    finally:
        db.close()
    lost = sorted(key for key in tally.saved if key not in stored)
    wrong = sorted(key for key, value in tally.saved.items() if key in stored and stored[key] != value)
    assert not lost, f"{len(lost)} acknowledged saves are missing, e.g. {lost[:10]}; {summary}"
    assert not wrong, f"{len(wrong)} keys hold another value, e.g. {[(k, stored[k]) for k in wrong[:5]]}; {summary}"
    half_run = sum(key in stored for key in tally.crashed)
    busy = sum(n > 0 for n in tally.in_flight_at_kill)
    print(f"{busy} of {tally.kills} kills hit a worker with saves in flight; "
          f"{half_run} of the {len(tally.crashed)} saves that got WorkerCrashed were committed nonetheless")
