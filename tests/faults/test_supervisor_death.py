"""If the supervisor dies, even by SIGKILL, every worker exits within 2 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from supervisor import containment
from tests.conftest import FAULT_PLUGINS, ROOT, copy_plugins

HOST = """
import asyncio, json, sys
from supervisor import Supervisor

async def main():
    async with Supervisor(sys.argv[1], log_dir=False) as sup:
        print(json.dumps([st.pid for st in sup.statuses()]), flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_supervisor_dies(tmp_path: Path, sig: int) -> None:
    # busy_loop and sigterm_ignorer are the hardest to end; echo is the common case.
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "faults", ["echo", "busy_loop", "sigterm_ignorer"])
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(plugins)], stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        assert host.stdout is not None
        pids = json.loads(host.stdout.readline())
        assert len(pids) == 3 and all(pids)
        workers = [psutil.Process(pid) for pid in pids]
        host.send_signal(sig)
        died_at = time.monotonic()
        host.wait(timeout=10)
        # Orphaned workers become children of init, which reaps them on its own
        # schedule: a zombie runs no code, so "exited" means dead or zombie.
        deadline = died_at + 2.0
        while any(containment.alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a state under a deadline
        alive = [w.pid for w in workers if containment.alive(w)]
        assert not alive, f"workers still running {time.monotonic() - died_at:.2f} s after the supervisor died: {alive}"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        host.stdout.close() if host.stdout else None
