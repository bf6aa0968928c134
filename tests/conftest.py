"""Shared fixtures. Tests spawn real workers; nothing here mocks a process."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"
FAULT_PLUGINS = PLUGINS / "faults"


def copy_plugins(src: Path, dst: Path, names: list[str] | None = None) -> Path:
    """Copy plugin folders into a private plugins dir, so runtime files (data.db,
    config.json) never touch the checkout and tests do not share state."""
    dst.mkdir(parents=True, exist_ok=True)
    for folder in sorted(src.iterdir()):
        if (folder / "plugin.toml").exists() and (names is None or folder.name in names):
            shutil.copytree(folder, dst / folder.name, ignore=shutil.ignore_patterns("__pycache__", "data.db*", "config.json", "pids.txt"))
    return dst


def worker_processes() -> set[int]:
    """Every live process anywhere that runs `-m worker` and descends from us or was orphaned."""
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True) if _is_worker(p)}


def _is_worker(proc: psutil.Process) -> bool:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return "-m" in cmd and "worker" in cmd


@pytest.fixture
def seed_plugins(tmp_path: Path) -> Path:
    return copy_plugins(PLUGINS, tmp_path / "plugins")


@pytest.fixture
def fault_plugins(tmp_path: Path) -> Path:
    return copy_plugins(FAULT_PLUGINS, tmp_path / "faults")


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves any child process behind (zombies included)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    alive = []
    for proc in left:
        try:
            alive.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:80]}")
        except psutil.Error:
            continue
    assert not alive, f"processes left behind: {alive}"


@pytest.fixture
async def faults(fault_plugins: Path, tmp_path: Path) -> AsyncIterator[Supervisor]:
    """A started supervisor on a private copy of plugins/faults (every fault plugin)."""
    sup = Supervisor(fault_plugins, log_dir=tmp_path / "logs")
    await sup.start()
    try:
        yield sup
    finally:
        await sup.stop()


def pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
