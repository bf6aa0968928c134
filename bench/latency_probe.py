"""A quick latency probe, not the benchmark suite (that is issue 6's `bench/`).

Sequential round trips, interleaved in one process run so machine noise hits
all rows alike: a bare msgpack-over-pipes echo child (the reference), then
`Supervisor.call` of the echo plugin's sync and async entries. Prints medians
of 15 rounds x 300 calls and the ratio to the reference.

    .venv/bin/python bench/latency_probe.py
    taskset -c 0 .venv/bin/python bench/latency_probe.py --pin 0   # children on CPU 0 too

On small VMs the placement of the two processes dominates (a cross-CPU wake-up
costs tens of microseconds), so compare rows of one run, and runs with the
same pinning.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import Call, MessageDecoder, encode_message  # noqa: E402
from supervisor import Supervisor, process  # noqa: E402
from tests.conftest import FAULT_PLUGINS, copy_plugins  # noqa: E402

REFERENCE_CHILD = """
import os, struct, msgpack
header = struct.Struct(">I")
buffer = b""
while True:
    data = os.read(0, 65536)
    if not data:
        break
    buffer += data
    while len(buffer) >= 4:
        (size,) = header.unpack_from(buffer)
        if len(buffer) < 4 + size:
            break
        message = msgpack.unpackb(buffer[4 : 4 + size])
        buffer = buffer[4 + size :]
        body = msgpack.packb(["result", message[1], True, message[3]["value"]])
        os.write(1, header.pack(len(body)) + body)
"""


async def main(rounds: int, calls: int, pin: str | None) -> None:
    prefix = ["taskset", "-c", pin] if pin is not None else []
    if pin is not None:
        original = process.worker_command
        process.worker_command = lambda *a, **k: prefix + original(*a, **k)  # type: ignore[assignment]
    child = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", REFERENCE_CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    decoder = MessageDecoder()

    async def reference(i: int) -> None:
        child.stdin.write(encode_message(Call(i, "echo", {"value": 1})))  # type: ignore[union-attr]
        while not decoder.feed(await child.stdout.read(65536)):  # type: ignore[union-attr]
            pass

    with tempfile.TemporaryDirectory() as tmp:
        plugins = copy_plugins(FAULT_PLUGINS, Path(tmp) / "plugins", ["echo"])
        async with Supervisor(plugins, log_dir=False) as sup:
            rows = {
                "reference (bare pipes + msgpack)": reference,
                "Supervisor.call, sync entry": lambda i: sup.call("echo", "echo", {"value": 1}),
                "Supervisor.call, async entry": lambda i: sup.call("echo", "aecho", {"value": 1}),
            }
            for run in rows.values():  # warm up
                for i in range(200):
                    await run(i)
            samples: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(rounds):
                for name, run in rows.items():
                    began = time.perf_counter()
                    for i in range(calls):
                        await run(i)
                    samples[name].append((time.perf_counter() - began) / calls * 1e6)
    child.stdin.close()
    await child.wait()
    base = statistics.median(samples["reference (bare pipes + msgpack)"])
    print("| row | median us/call | spread (min-max) | ratio |\n|---|---|---|---|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f}-{max(values):.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--pin", default=None, help="run the children on this CPU list (taskset -c)")
    ns = parser.parse_args()
    asyncio.run(main(ns.rounds, ns.calls, ns.pin))
