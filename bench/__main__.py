"""The benchmark: `python -m bench` from the repository root (see README, Performance).

    .venv/bin/pip install -e '.[bench]'       # loky, pebble, execnet (ray: optional)
    .venv/bin/python -m bench                 # full run, about two minutes
    .venv/bin/python -m bench --quick         # fewer rounds, a smoke test of the harness
    .venv/bin/python -m bench --pin same      # parent and workers on CPU 0
    .venv/bin/python -m bench --pin cross     # parent on CPU 0, workers on CPU 1
    .venv/bin/python -m bench --no-ray        # without the Ray rows (they start a local Ray cluster)

Prints a markdown table (median, spread, p99, the ratio to each figure's
reference and whether the target is met) and writes the same as JSON
(`--json`, default bench-results.json). Every ratio compares figures of the
same run: machines here are shared and noisy, and rounds are interleaved
across contestants so a noisy moment hits them all alike.

With Ray installed (and peers on), the async entry also runs through a
Supervisor with the Ray launcher, on a local one-node cluster: its latency is
held to the Ray actor peer's call plus the reference's pipe round trip (the
issue's bound: the relay may not cost more than the actor call it could have
been plus the pipes on the node; its frames in fact cross a TCP connection of
their own, supervisor -> relay actor, then pipes to the worker).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import reference, supervised
from bench.measure import Figure, markdown, percentile, sum_of, to_json

ROOT = Path(__file__).resolve().parent.parent
BULK = b"\x5a" * (16 * 2**20)
LATENCY_TARGET, THROUGHPUT_TARGET, COLD_TARGET, RESTART_TARGET, RSS_TARGET, BULK_TARGET, CPU_TARGET = 1.5, 0.7, 1.3, 1.5, 1.3, 0.7, 1.2
RAY_TARGET = 1.0  # Ray-launched call <= Ray actor call + pipe round trip, same run
LOCAL = ("supervisor_sync", "supervisor_async")  # the keys the supervisor's own targets apply to


def pin_workers(pin: str | None) -> Callable[[int | None], None]:
    """Apply --pin to this process now; return what to apply to each worker pid."""
    if pin is None or len(os.sched_getaffinity(0)) < 2:
        return lambda pid: None
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})  # workers spawned from now on inherit it: "same"
    if pin == "same":
        return lambda pid: None
    from supervisor import process

    original = process.command_for
    # "cross": our restarted workers must land on the other CPU too, not only the first ones.
    process.command_for = lambda *a, **k: ["taskset", "-c", str(cpus[1]), *original(*a, **k)]  # type: ignore[assignment]

    def move(pid: int | None) -> None:
        if pid is not None:
            os.sched_setaffinity(pid, {cpus[1]})

    return move


async def latency_and_throughput(contestants: list[Any], rounds: int, calls: int, bursts: int, burst_size: int) -> list[Figure]:
    per_call: dict[str, list[float]] = {c.name: [] for c in contestants}
    medians: dict[str, list[float]] = {c.name: [] for c in contestants}
    rates: dict[str, list[float]] = {c.name: [] for c in contestants}
    for round_index in range(rounds):
        for contestant in contestants:
            times = []
            for index in range(calls):
                began = time.perf_counter()
                await contestant.call(index)
                times.append((time.perf_counter() - began) * 1e6)
            per_call[contestant.name] += times
            medians[contestant.name].append(statistics.median(times))
        if round_index < bursts:
            for contestant in contestants:
                began = time.perf_counter()
                await contestant.burst(burst_size, 64)
                rates[contestant.name].append(burst_size / (time.perf_counter() - began))
    figures = []
    for contestant in contestants:
        key = contestant.key
        ours = key in LOCAL
        figures.append(Figure(
            f"latency.{key}", f"{contestant.name}, 1 in flight", "us", medians[contestant.name],
            reference=None if key == "reference" else "latency.reference", target=LATENCY_TARGET if ours else None,
            p99=percentile(per_call[contestant.name], 0.99),
        ))
    for contestant in contestants:
        key = contestant.key
        figures.append(Figure(
            f"throughput.{key}", f"{contestant.name}, 64 in flight", "calls/s", rates[contestant.name], higher_is_better=True,
            reference=None if key == "reference" else "throughput.reference",
            target=THROUGHPUT_TARGET if key in LOCAL else None,
        ))
    peers = [f for f in figures if f.key.startswith("latency.peer_")]
    if peers:
        fastest = min(peers, key=lambda f: f.median)
        for key in LOCAL:
            ours = next(f for f in figures if f.key == f"latency.{key}")
            figures.append(Figure(
                f"latency.{key}.vs_peer", f"{ours.label.removesuffix(', 1 in flight')} vs the fastest peer", "us",
                ours.samples, reference=fastest.key, target=0.5,
            ))
    return figures + ray_figures({figure.key: figure for figure in figures})


def ray_figures(by_key: dict[str, Figure]) -> list[Figure]:
    """The Ray launcher's target: its call against a plain Ray actor call plus the local
    pipe round trip, summed round by round (empty without both Ray contestants)."""
    ours, actor = by_key.get("latency.supervisor_ray"), by_key.get("latency.peer_rayecho")
    if ours is None or actor is None:
        return []
    budget = sum_of("latency.ray_budget", "ray actor call + reference pipe round trip, 1 in flight", [actor, by_key["latency.reference"]])
    return [
        budget,
        Figure("latency.supervisor_ray.vs_budget", "Ray launcher vs ray actor call + pipe round trip", "us", ours.samples,
               reference=budget.key, target=RAY_TARGET),
        Figure("throughput.supervisor_ray.vs_actor", "Ray launcher vs ray actor, 64 in flight", "calls/s",
               by_key["throughput.supervisor_ray"].samples, higher_is_better=True, reference="throughput.peer_rayecho"),
    ]


async def run(args: argparse.Namespace) -> list[Figure]:
    move = pin_workers(args.pin)
    figures: list[Figure] = []
    notes: list[str] = []

    # 1-3: latency and throughput, one warm worker each, rounds interleaved.
    ref = reference.ReferenceEcho()
    ref.key = "reference"  # type: ignore[attr-defined]
    sync, asynchronous = supervised.SupervisorEcho("echo"), supervised.SupervisorEcho("aecho")
    sync.key, asynchronous.key = "supervisor_sync", "supervisor_async"  # type: ignore[attr-defined]
    contestants: list[Any] = [ref, sync, asynchronous]
    if not args.no_peers:
        try:
            from bench import peers
        except ImportError as exc:
            notes.append(f"peers skipped: {exc} (pip install -e '.[bench]')")
        else:
            # Before the Ray actor peer: the launcher must be the one to call ray.init.
            contestants += ray_launched(args, notes)
            classes, skipped = peers.available_peers()
            notes += skipped
            for cls in classes:
                if args.no_ray and cls is peers.RayEcho:
                    continue
                peer = cls()
                peer.key = f"peer_{cls.__name__.lower()}"
                contestants.append(peer)
    started = []
    try:
        for contestant in contestants:
            await contestant.start()
            started.append(contestant)
            move(contestant.worker_pid())
        figures += await latency_and_throughput(contestants, args.rounds, args.calls, args.bursts, args.burst_size)

        # 5: restart after SIGKILL (ours, and the peers that replace a dead worker).
        spawn = [(await reference.bare_child_spawn())[0] for _ in range(args.starts)]
        await reference.close_bare_children()
        figures.append(Figure("start.bare", "bare child: spawn, import msgpack, first frame", "ms", [s * 1e3 for s in spawn]))
        spare = supervised.SupervisorEcho("aecho", spare=True)
        spare.key = "supervisor_spare"  # type: ignore[attr-defined]
        await spare.start()
        started.append(spare)
        move(spare.worker_pid())
        restartable = [c for c in [*contestants, spare] if c.key in ("supervisor_async", "supervisor_spare", "supervisor_ray") or getattr(c, "restartable", False)]
        restart_times: dict[str, list[float]] = {c.key: [] for c in restartable}
        for _ in range(args.starts):
            for contestant in restartable:
                restart_times[contestant.key].append(await supervised.restart_after_sigkill(contestant) * 1e3)
                move(contestant.worker_pid())
        ours = {"supervisor": restart_times["supervisor_async"], "spare": restart_times["supervisor_spare"]}
        figures.append(Figure("restart.supervisor", "restart after SIGKILL until the next call completes", "ms", ours["supervisor"],
                              reference="start.bare", target=RESTART_TARGET))
        figures.append(Figure("restart.spare", "the same with spare_worker = true", "ms", ours["spare"],
                              reference="start.bare", target=RESTART_TARGET))
        if "supervisor_ray" in restart_times:
            figures.append(Figure("restart.supervisor_ray", "the same with the Ray launcher (its relay actor spawns the next worker)", "ms",
                                  restart_times["supervisor_ray"], reference="restart.supervisor"))
        for contestant in restartable:
            if not contestant.key.startswith("supervisor"):
                figures.append(Figure(f"restart.{contestant.key}", f"{contestant.name}: restart after SIGKILL", "ms", restart_times[contestant.key]))
                for key, label in (("supervisor", "our restart"), ("spare", "our restart with a spare")):
                    figures.append(Figure(f"restart.{key}.vs_{contestant.key}", f"{label} vs {contestant.name}", "ms", ours[key],
                                          reference=f"restart.{contestant.key}", target=1 / 3))

        # 6: memory of one idle worker.
        _, bare_pid = await reference.bare_child_spawn()
        bare_rss, bare_uss = supervised.memory_of(bare_pid)
        await reference.close_bare_children()
        worker_pid = asynchronous.worker_pid()
        assert worker_pid is not None
        rss, uss = supervised.memory_of(worker_pid)
        figures.append(Figure("memory.bare.rss", "bare child (msgpack imported): RSS", "MiB", [bare_rss]))
        figures.append(Figure("memory.worker.rss", "idle worker: RSS", "MiB", [rss], reference="memory.bare.rss", target=RSS_TARGET))
        figures.append(Figure("memory.bare.uss", "bare child: USS", "MiB", [bare_uss]))
        figures.append(Figure("memory.worker.uss", "idle worker: USS", "MiB", [uss], reference="memory.bare.uss"))

        # 7: bulk, 16 MiB echoed.
        bulk: dict[str, list[float]] = {"reference": [], "supervisor_sync": [], "supervisor_async": []}
        for _ in range(args.bulk_rounds):
            for contestant in (ref, sync, asynchronous):
                began = time.perf_counter()
                back = await contestant.call(BULK)
                assert len(back) == len(BULK)
                bulk[contestant.key].append(16 / (time.perf_counter() - began))
        figures.append(Figure("bulk.reference", "16 MiB bytes echoed: reference", "MiB/s", bulk["reference"], higher_is_better=True))
        for key in ("supervisor_sync", "supervisor_async"):
            figures.append(Figure(f"bulk.{key}", f"16 MiB bytes echoed: Supervisor.call, {key.split('_')[1]} entry", "MiB/s", bulk[key],
                                  higher_is_better=True, reference="bulk.reference", target=BULK_TARGET))
    finally:
        for contestant in reversed(started):
            await contestant.close()

    # 4: cold start, one plugin and fifty together.
    figures.append(Figure("start.supervisor", "cold start: one plugin, start() to running", "ms",
                          [await supervised.cold_start(1) * 1e3 for _ in range(args.starts)], reference="start.bare", target=COLD_TARGET))
    figures.append(Figure("start.supervisor50", "cold start: 50 plugins together", "ms",
                          [await supervised.cold_start(50) * 1e3 for _ in range(max(1, args.starts // 3))]))

    # 8: fan-out, 50 plugins x 64 in flight, against 50 bare children driven alike.
    figures += await fan_out(args, move)
    figures += await memory_of_fifty()
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return figures


def ray_launched(args: argparse.Namespace, notes: list[str]) -> list[Any]:
    """The Ray-launched contestant, or none (with a note saying why)."""
    if args.no_ray:
        return []
    if importlib.util.find_spec("ray") is None:
        notes.append("Ray launcher rows skipped: ray not installed (pip install -e '.[ray]')")
        return []
    contestant = supervised.ray_launched()
    contestant.key = "supervisor_ray"  # type: ignore[attr-defined]
    return [contestant]


async def fan_out(args: argparse.Namespace, move: Callable[[int | None], None]) -> list[Figure]:
    children = [reference.ReferenceEcho() for _ in range(args.plugins)]
    for child in children:
        await child.start()
        move(child.worker_pid())
    ref_rates, ref_cpu = [], []
    try:
        for _ in range(args.fan_rounds):
            cpu0, began = reference.cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(child.burst(args.fan_calls, 64) for child in children))
            seconds, cpu = time.perf_counter() - began, reference.cpu_seconds() - cpu0
            calls = args.fan_calls * len(children)
            ref_rates.append(calls / seconds)
            ref_cpu.append(cpu / calls * 1e6)
    finally:
        for child in children:
            await child.close()
    sup, folder = await supervised.supervisor_with_plugins(args.plugins)
    rates, cpus = [], []
    try:
        for status in sup.statuses():
            move(status.pid)
        for _ in range(args.fan_rounds):
            seconds, cpu, calls = await supervised.fan_out(sup, args.fan_calls, 64)
            rates.append(calls / seconds)
            cpus.append(cpu / calls * 1e6)
    finally:
        await sup.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return [
        Figure("fanout.reference", f"fan-out reference: {args.plugins} bare children x 64 in flight", "calls/s", ref_rates, higher_is_better=True),
        Figure("fanout.supervisor", f"fan-out: {args.plugins} plugins x 64 in flight (async entry)", "calls/s", rates, higher_is_better=True,
               reference="fanout.reference"),
        Figure("fanout.reference.cpu", "fan-out reference: parent CPU per call", "us", ref_cpu),
        Figure("fanout.supervisor.cpu", "fan-out: supervisor CPU per call", "us", cpus, reference="fanout.reference.cpu", target=CPU_TARGET),
    ]


MEMORY_PROBE = r"""
import asyncio, json, sys, psutil
sys.path.insert(0, sys.argv[2])
from supervisor import Supervisor
async def main():
    async with Supervisor(sys.argv[1], log_dir=False) as sup:
        me = psutil.Process().memory_full_info()
        workers = [psutil.Process(s.pid).memory_full_info() for s in sup.statuses()]
        print(json.dumps({"rss": me.rss, "uss": me.uss, "workers_rss": sum(w.rss for w in workers),
                          "workers_uss": sum(w.uss for w in workers), "count": len(workers)}))
asyncio.run(main())
"""


async def memory_of_fifty() -> list[Figure]:
    """In a fresh process, so the benchmark's own imports (peers, ray) do not count."""
    folder = supervised.plugins_folder(50)
    try:
        probe = await asyncio.create_subprocess_exec(sys.executable, "-c", MEMORY_PROBE, str(folder), str(ROOT), stdout=asyncio.subprocess.PIPE)
        out, _ = await probe.communicate()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    data = json.loads(out)
    return [
        Figure("memory.supervisor50.rss", "supervisor process with 50 plugins: RSS", "MiB", [data["rss"] / 2**20]),
        Figure("memory.supervisor50.uss", "supervisor process with 50 plugins: USS", "MiB", [data["uss"] / 2**20]),
        Figure("memory.workers50.uss", "its 50 idle workers: USS, summed", "MiB", [data["workers_uss"] / 2**20]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pin", choices=("same", "cross"), default=None, help="CPU placement (default: the scheduler's)")
    parser.add_argument("--quick", action="store_true", help="few rounds: checks the harness, not the speed")
    parser.add_argument("--no-peers", action="store_true", help="only the reference and the supervisor")
    parser.add_argument("--no-ray", action="store_true", help="without the Ray launcher and the Ray actor peer")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="where to write the JSON (default bench-results.json)")
    args = parser.parse_args()
    scale = dict(rounds=3, calls=100, bursts=2, burst_size=500, starts=3, bulk_rounds=2, plugins=10, fan_rounds=1, fan_calls=100) if args.quick else \
        dict(rounds=15, calls=300, bursts=5, burst_size=3000, starts=10, bulk_rounds=5, plugins=50, fan_rounds=3, fan_calls=200)
    for name, value in scale.items():
        setattr(args, name, value)
    # The runs SIGKILL workers on purpose: the supervisor's warnings about it are no news here.
    logging.basicConfig(level=logging.ERROR)
    began = time.perf_counter()
    figures = asyncio.run(run(args))
    context = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "cpu": _cpu_model(), "pin": args.pin or "none", "quick": args.quick, "seconds": round(time.perf_counter() - began, 1),
    }
    print(f"## neko-supervisor benchmark ({context['cpu']}, {context['cpus']} CPUs, Python {context['python']}, pin: {context['pin']})\n")
    print(markdown(figures))
    args.json.write_text(to_json(figures, context))
    print(f"\n{len(figures)} figures in {context['seconds']} s; JSON in {args.json}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
