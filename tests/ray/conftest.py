"""A local Ray cluster for the Ray launcher's tests: started once, on 127.0.0.1,
with Ray's token authentication on, and torn down (every process of it) after.

These tests run in their own CI step (`pytest -m ray`, see README): the cluster
costs a few seconds to start and Ray is an optional extra.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

# Ray reads its authentication settings once, when it is first imported: this
# process joins the test cluster as a driver, so they are set before that.
TOKEN = os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

ray = pytest.importorskip("ray", reason="the Ray launcher's tests need the extra: pip install -e '.[test,ray]'")

CLUSTER_START_TIMEOUT = 60.0
# A lost node is noticed in a few seconds, not Ray's default half minute. Not faster: a node
# starting on a busy 2-CPU machine (CI) may miss a few checks of 300 ms.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}
RAY = Path(sys.executable).parent / "ray"


@dataclass(frozen=True)
class Cluster:
    address: str
    token: str
    env: dict[str, str]      # what a process needs to join it (token auth on)
    temp_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # polling a log file: there is no event to wait on
    raise RuntimeError(f"the Ray node did not start: {log.read_text(errors='replace')[-3000:]}")


_nodes_started = itertools.count()


def start_node(env: dict[str, str], temp_dir: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """`ray start --block` in its own process group; returns once the node is up.

    Each node has a temp dir of its own, as nodes on separate machines would: sharing one
    (Ray's default on one machine), an actor once found its working dir, the plugins folder
    Ray unpacks under it, deleted while another node of the machine came and went."""
    log = temp_dir / f"{name}.log"
    if "--temp-dir" not in args:
        args = (*args, "--temp-dir", str(temp_dir / f"n{next(_nodes_started)}"))  # short: Ray's socket paths
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", *args],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_for(log, "Ray runtime started", proc, CLUSTER_START_TIMEOUT)
    except BaseException:
        stop_node(proc)
        raise
    return proc


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the node's whole process group (a SIGTERM drains for 30 s) and wait for every process of it."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.kill()
    proc.wait(10)
    psutil.wait_procs(family, timeout=10)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    if RAY.exists() is False:
        pytest.fail(f"Ray is importable but its command {RAY} is missing")
    # A short path: Ray's unix sockets live under it (a 107-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="nekoray", dir="/tmp"))
    env = dict(os.environ)
    port = _free_port()
    head = start_node(
        # One GPU declared (no hardware needed): Ray then sets CUDA_VISIBLE_DEVICES for an actor that asks for it.
        env, temp_dir, "head", "--head", "--port", str(port), "--num-cpus", "4", "--num-gpus", "1", "--include-dashboard=false",
        "--temp-dir", str(temp_dir), "--labels", "zone=head",
        "--system-config", json.dumps(FAST_HEALTH_CHECKS),
    )
    try:
        yield Cluster(f"127.0.0.1:{port}", TOKEN, env, temp_dir)
    finally:
        stop_node(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.ray)
