"""Shared fixtures. Tests spawn real workers; nothing here mocks a process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import process

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"
FAULT_PLUGINS = PLUGINS / "faults"
RUNTIME_FILES = ("__pycache__", "data.db*", "config.json", "pids.txt", "delay.txt")


def copy_plugins(src: Path, dst: Path, names: list[str] | None = None) -> Path:
    """Copy plugin folders into a private plugins dir, so runtime files (data.db,
    config.json) never touch the checkout and tests do not share state."""
    dst.mkdir(parents=True, exist_ok=True)
    for folder in sorted(src.iterdir()):
        if (folder / "plugin.toml").exists() and (names is None or folder.name in names):
            shutil.copytree(folder, dst / folder.name, ignore=shutil.ignore_patterns(*RUNTIME_FILES))
    return dst


def pid_alive(pid: int) -> bool:
    """Running code: not gone, not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree_snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


@pytest.fixture(scope="session", autouse=True)
def checkout_plugins_untouched() -> Iterator[None]:
    """Tests work on copies: the checkout's plugins/ must come out exactly as it went in."""
    before = _tree_snapshot(PLUGINS)
    yield
    after = _tree_snapshot(PLUGINS)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"tests changed the checkout's plugins/: {changed[:10]}"


@pytest.fixture
def seed_plugins(tmp_path: Path) -> Path:
    return copy_plugins(PLUGINS, tmp_path / "plugins")


@pytest.fixture
def no_leaks(tmp_path: Path) -> Iterator[None]:
    """Fail the test if it leaves any process behind: a child of ours (zombies
    included), or an orphan that carries a worker's tag and runs in this test's
    folders (a grandchild whose worker died, a worker whose CLI host exited)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    left += [p for p in _tagged_orphans() if _runs_under(p, tmp_path)]
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:80]}")
        except psutil.Error:
            continue
    assert not described, f"processes left behind: {described}"


def _tagged_orphans() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if process.TAG_VARIABLE in proc.environ() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _runs_under(proc: psutil.Process, folder: Path) -> bool:
    try:
        return Path(proc.cwd()).is_relative_to(folder)
    except (psutil.Error, OSError):
        return False
