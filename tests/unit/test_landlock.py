"""The Landlock sandbox, tried for real.

Landlock cannot be undone, so every confinement happens in a short-lived
`python -P -c PROBE` child (as the worker runs: `-P`, PYTHONPATH = the
checkout). A denial only proves something if the same attempt works
unconfined, so denial tests run the probe twice, on two fresh copies of the
same layout:

    tmp/<run>/plugins/me/           the plugin being confined (cwd of the probe)
    tmp/<run>/plugins/sibling/      another plugin: secret.txt must stay unreadable
    tmp/<run>/outside/              elsewhere on the machine: data.txt
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information
import pytest

from worker import landlock
from worker.landlock import SandboxReport, outside_plugins, python_read_paths

ROOT = Path(__file__).resolve().parents[2]
HOST_ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(HOST_ABI == 0, reason="the host kernel offers no Landlock")
DENIED = "PermissionError"

# Runs before the test's body. `attempt` records "ok" or the exception's class
# name; json is imported only at the end, after the sandbox is in place.
PROBE_HEAD = """
import ast, os, sys, threading
from pathlib import Path
from worker import landlock

P = ast.literal_eval(sys.argv[1])
PLUGIN, SIBLING_FILE, PLUGINS_ROOT = Path(P["plugin"]), Path(P["sibling_file"]), Path(P["plugins_root"])
OUTSIDE_DIR, OUTSIDE_FILE = Path(P["outside_dir"]), Path(P["outside_file"])
RESULTS = {}
MODULES_BEFORE = set(sys.modules)

def attempt(name, action):
    try:
        action()
    except Exception as exc:
        RESULTS[name] = type(exc).__name__
    else:
        RESULTS[name] = "ok"

if P["sandbox"]:
    RESULTS["report"] = landlock.restrict(PLUGIN, network=P["network"]).as_dict()
"""
PROBE_TAIL = """
import json
print(json.dumps(RESULTS))
"""


@dataclass(frozen=True)
class Layout:
    plugins_root: Path
    plugin: Path
    sibling_file: Path
    outside_dir: Path
    outside_file: Path

    @classmethod
    def create(cls, base: Path) -> Layout:
        plugins_root = base / "plugins"
        plugin = plugins_root / "me"
        plugin.mkdir(parents=True)
        (plugin / "plugin.toml").write_text('[plugin]\nid = "me"\n')
        (plugins_root / "sibling").mkdir()
        sibling_file = plugins_root / "sibling" / "secret.txt"
        sibling_file.write_text("sibling secret")
        outside_dir = base / "outside"
        outside_dir.mkdir()
        outside_file = outside_dir / "data.txt"
        outside_file.write_text("outside data")
        return cls(plugins_root, plugin, sibling_file, outside_dir, outside_file)


def run_probe(
    base: Path, body: str, *, sandbox: bool, network: bool = False, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `body` in a fresh child on a fresh layout under `base`; return its RESULTS."""
    layout = Layout.create(base)
    params = {key: str(value) for key, value in vars(layout).items()} | {"sandbox": sandbox, "network": network}
    child_env = {key: value for key, value in os.environ.items() if key != landlock.ENV_DISABLE}
    child_env |= {"PYTHONPATH": str(ROOT), **(env or {})}
    code = PROBE_HEAD + textwrap.dedent(body) + PROBE_TAIL
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code, repr(params)],
        capture_output=True, text=True, timeout=20, cwd=layout.plugin, env=child_env, check=False,
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr}"
    results: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    if sandbox and "report" in results:
        assert results["report"]["abi"] == HOST_ABI and results["report"]["filesystem"], results["report"]
    return results


def free_and_confined(tmp_path: Path, body: str, *, network: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same probe unconfined and confined, each on its own pristine layout."""
    free = run_probe(tmp_path / "free", body, sandbox=False, network=network)
    confined = run_probe(tmp_path / "confined", body, sandbox=True, network=network)
    return free, confined


# --- the file system -----------------------------------------------------------


@needs_landlock
def test_a_sibling_plugin_and_the_plugins_root_are_out_of_reach(tmp_path: Path) -> None:
    body = """
    attempt("read sibling", SIBLING_FILE.read_text)
    attempt("list sibling", lambda: os.listdir(SIBLING_FILE.parent))
    attempt("list plugins root", lambda: os.listdir(PLUGINS_ROOT))
    attempt("write sibling", lambda: SIBLING_FILE.write_text("overwritten"))
    """
    free, confined = free_and_confined(tmp_path, body)
    attempts = ("read sibling", "list sibling", "list plugins root", "write sibling")
    assert [free[name] for name in attempts] == ["ok"] * 4
    assert [confined[name] for name in attempts] == [DENIED] * 4


@needs_landlock
def test_files_elsewhere_are_neither_readable_nor_writable(tmp_path: Path) -> None:
    body = """
    attempt("read", OUTSIDE_FILE.read_text)
    attempt("append", lambda: OUTSIDE_FILE.open("a").close())
    attempt("create", lambda: (OUTSIDE_DIR / "new.txt").write_text("x"))
    attempt("remove", OUTSIDE_FILE.unlink)
    attempt("read /etc/passwd", Path("/etc/passwd").read_bytes)
    """
    free, confined = free_and_confined(tmp_path, body)
    attempts = ("read", "append", "create", "remove", "read /etc/passwd")
    assert [free[name] for name in attempts] == ["ok"] * 5
    assert [confined[name] for name in attempts] == [DENIED] * 5
    assert (tmp_path / "confined" / "outside" / "data.txt").read_text() == "outside data"
    assert not (tmp_path / "confined" / "outside" / "new.txt").exists()


@needs_landlock
def test_the_plugin_folder_is_fully_writable(tmp_path: Path) -> None:
    body = """
    def truncations():
        path = PLUGIN / "t.txt"
        path.write_text("0123456789")
        os.truncate(path, 5)                 # truncate(2) on a path
        with path.open("r+") as f:           # ftruncate(2) on a file opened in the sandbox
            f.truncate(2)
        assert path.read_text() == "01"
        path.write_text("new")               # open(O_TRUNC) on an existing file
        assert path.read_text() == "new"

    def rename_across_folders():
        (PLUGIN / "a").mkdir()
        (PLUGIN / "b").mkdir()
        (PLUGIN / "a" / "f").write_text("moved")
        os.rename(PLUGIN / "a" / "f", PLUGIN / "b" / "f")
        assert (PLUGIN / "b" / "f").read_text() == "moved"

    def remove_everything():
        (PLUGIN / "b" / "f").unlink()
        (PLUGIN / "a").rmdir()
        (PLUGIN / "b").rmdir()
        os.symlink("plugin.toml", PLUGIN / "link")
        os.unlink(PLUGIN / "link")

    attempt("read own", (PLUGIN / "plugin.toml").read_text)
    attempt("truncate", truncations)
    attempt("rename across folders", rename_across_folders)
    attempt("remove", remove_everything)
    attempt("write /dev/null", lambda: Path(os.devnull).write_text("x"))
    """
    confined = run_probe(tmp_path, body, sandbox=True)
    assert {k: v for k, v in confined.items() if k != "report"} == {
        "read own": "ok", "truncate": "ok", "rename across folders": "ok", "remove": "ok", "write /dev/null": "ok",
    }
    assert sorted(p.name for p in (tmp_path / "plugins" / "me").iterdir()) == ["plugin.toml", "t.txt"]


@needs_landlock
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_works_in_the_plugin_folder(tmp_path: Path, journal_mode: str) -> None:
    body = f"""
    import sqlite3

    def use_database():
        db = sqlite3.connect(PLUGIN / "data.db")
        mode = db.execute("PRAGMA journal_mode={journal_mode}").fetchone()[0]
        assert mode == "{journal_mode}", mode
        db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        with db:
            db.executemany("INSERT INTO kv VALUES (?, ?)", [("a", "1"), ("b", "2")])
        db.close()
        again = sqlite3.connect(PLUGIN / "data.db")
        assert again.execute("SELECT count(*) FROM kv").fetchone()[0] == 2
        again.close()

    attempt("sqlite", use_database)
    """
    confined = run_probe(tmp_path, body, sandbox=True)
    assert confined["sqlite"] == "ok"
    assert (tmp_path / "plugins" / "me" / "data.db").stat().st_size > 0


@needs_landlock
def test_the_usual_modules_import_after_restrict(tmp_path: Path) -> None:
    body = """
    import asyncio, hashlib, json, msgpack, sqlite3, ssl
    RESULTS["preloaded"] = sorted({"asyncio", "json", "msgpack", "sqlite3", "ssl"} & MODULES_BEFORE)
    attempt("asyncio loop", lambda: asyncio.run(asyncio.sleep(0)))
    attempt("ssl context", ssl.create_default_context)
    attempt("hashlib", lambda: hashlib.sha256(b"x").hexdigest())
    attempt("msgpack", lambda: msgpack.unpackb(msgpack.packb({"a": 1})))
    attempt("cpu count", lambda: os.cpu_count() or 1 / 0)
    attempt("own /proc/self", lambda: Path("/proc/self/status").read_text())
    """
    confined = run_probe(tmp_path, body, sandbox=True)
    assert confined["preloaded"] == [], "the probe must import these after restrict"
    for name in ("asyncio loop", "ssl context", "hashlib", "msgpack", "cpu count", "own /proc/self"):
        assert confined[name] == "ok", name


@needs_landlock
def test_a_thread_started_after_restrict_is_confined(tmp_path: Path) -> None:
    body = """
    def in_a_thread():
        attempt("thread reads sibling", SIBLING_FILE.read_text)
        attempt("thread reads outside", OUTSIDE_FILE.read_text)
        attempt("thread writes own", lambda: (PLUGIN / "from-thread.txt").write_text("x"))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    """
    free, confined = free_and_confined(tmp_path, body)
    assert [free["thread reads sibling"], free["thread reads outside"]] == ["ok", "ok"]
    assert [confined["thread reads sibling"], confined["thread reads outside"]] == [DENIED, DENIED]
    assert confined["thread writes own"] == "ok"


@needs_landlock
def test_a_child_process_runs_python_and_is_confined_too(tmp_path: Path) -> None:
    body = """
    import subprocess
    child = subprocess.run(
        [sys.executable, "-c", "import sys; open(sys.argv[1]).read()", str(OUTSIDE_FILE)],
        capture_output=True, text=True, timeout=10,
    )
    RESULTS["child exit"] = child.returncode
    RESULTS["child error"] = child.stderr.strip().splitlines()[-1:]
    """
    free, confined = free_and_confined(tmp_path, body)
    assert free["child exit"] == 0
    assert confined["child exit"] == 1
    assert confined["child error"][0].startswith("PermissionError"), confined["child error"]


# --- network and signals ---------------------------------------------------------


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A TCP socket listening on 127.0.0.1 in the test process: connects complete in the backlog."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield server.getsockname()[1]


TCP_BODY = """
import socket
attempt("connect", lambda: socket.create_connection(("127.0.0.1", P["port"]), timeout=5).close())
attempt("bind", lambda: socket.create_server(("127.0.0.1", 0)).close())
"""


@pytest.mark.skipif(HOST_ABI < 4, reason="TCP restriction needs Landlock ABI 4")
def test_tcp_is_denied_without_network(tmp_path: Path, listening_port: int) -> None:
    body = f"P['port'] = {listening_port}\n" + TCP_BODY
    free, confined = free_and_confined(tmp_path, body, network=False)
    assert [free["connect"], free["bind"]] == ["ok", "ok"]
    assert [confined["connect"], confined["bind"]] == [DENIED, DENIED]
    assert confined["report"]["network"] == "denied"


@pytest.mark.skipif(HOST_ABI < 4, reason="TCP restriction needs Landlock ABI 4")
def test_tcp_is_allowed_with_network(tmp_path: Path, listening_port: int) -> None:
    body = f"P['port'] = {listening_port}\n" + TCP_BODY
    confined = run_probe(tmp_path, body, sandbox=True, network=True)
    assert [confined["connect"], confined["bind"]] == ["ok", "ok"]
    assert confined["report"]["network"] == "allowed"


@pytest.mark.skipif(HOST_ABI < 6, reason="signal scoping needs Landlock ABI 6")
def test_signals_cannot_leave_the_sandbox(tmp_path: Path) -> None:
    body = """
    attempt("signal parent", lambda: os.kill(os.getppid(), 0))
    attempt("signal self", lambda: os.kill(os.getpid(), 0))
    """
    free, confined = free_and_confined(tmp_path, body)
    assert [free["signal parent"], free["signal self"]] == ["ok", "ok"]
    assert [confined["signal parent"], confined["signal self"]] == [DENIED, "ok"]
    assert confined["report"]["signals_scoped"] is True


# --- refusals and the fallback -----------------------------------------------------


def test_env_disable_behaves_like_a_kernel_without_landlock(tmp_path: Path) -> None:
    body = """
    RESULTS["abi"] = landlock.abi_version()
    RESULTS["report"] = landlock.restrict(PLUGIN, network=False).as_dict()
    attempt("read sibling", SIBLING_FILE.read_text)
    """
    results = run_probe(tmp_path, body, sandbox=False, env={landlock.ENV_DISABLE: "off"})
    assert results["abi"] == 0
    assert results["report"]["abi"] == 0 and results["report"]["filesystem"] is False
    assert landlock.ENV_DISABLE in results["report"]["reason"]
    assert results["read sibling"] == "ok", "nothing may be applied"


@needs_landlock
def test_restrict_refuses_while_a_second_thread_exists(tmp_path: Path) -> None:
    body = """
    release = threading.Event()
    waiter = threading.Thread(target=release.wait)
    waiter.start()
    attempt("restrict with two threads", lambda: landlock.restrict(PLUGIN, network=False))
    attempt("read sibling after the refusal", SIBLING_FILE.read_text)
    release.set()
    waiter.join()
    RESULTS["alone"] = landlock.restrict(PLUGIN, network=False).as_dict()
    attempt("read sibling after restrict", SIBLING_FILE.read_text)
    """
    results = run_probe(tmp_path, body, sandbox=False)
    assert results["restrict with two threads"] == "RuntimeError"
    assert results["read sibling after the refusal"] == "ok"
    assert results["alone"]["abi"] == HOST_ABI
    assert results["read sibling after restrict"] == DENIED


# --- which paths are granted (pure, in-process) ------------------------------------------


def assert_clear_of(paths: list[Path], plugins_root: Path) -> None:
    plugins_root = plugins_root.resolve()
    for path in paths:
        assert not plugins_root.is_relative_to(path), f"{path} contains the plugins root"
        assert not path.is_relative_to(plugins_root), f"{path} is inside the plugins root"


def test_python_read_paths_of_the_checkout_skip_its_plugins() -> None:
    plugins_root = ROOT / "plugins"
    paths = python_read_paths(plugins_root / "persistent", network=True)
    assert_clear_of(paths, plugins_root)
    assert {ROOT / "protocol", ROOT / "worker"} <= set(paths)
    assert Path("/etc/passwd") not in paths


def test_an_ancestor_on_sys_path_is_expanded_around_the_plugins_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = Layout.create(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "to-plugins").symlink_to(layout.plugins_root)
    monkeypatch.setattr(sys, "path", [
        "/",                                   # never expanded: it would grant the machine
        str(tmp_path),                         # an ancestor: expanded
        str(layout.plugins_root),              # the root itself
        str(layout.sibling_file.parent),       # a sibling
        str(tmp_path / "elsewhere" / "to-plugins"),  # the root through a symlink
    ])
    paths = python_read_paths(layout.plugin, network=False)
    assert_clear_of(paths, layout.plugins_root)
    assert layout.outside_dir in paths and tmp_path / "elsewhere" in paths
    assert tmp_path not in paths and Path("/") not in paths
    assert Path("/etc") not in paths, "the filesystem root was expanded"


def test_a_symlinked_sibling_is_protected_where_it_really_lives(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    real_sibling = tmp_path / "elsewhere" / "real-sibling"
    real_sibling.mkdir(parents=True)
    (layout.plugins_root / "linked").symlink_to(real_sibling)
    granted = outside_plugins([real_sibling, tmp_path / "elsewhere", layout.outside_dir], layout.plugin)
    assert granted == [layout.outside_dir]


def test_network_adds_name_resolution_and_certificates_but_no_private_keys() -> None:
    offline = set(python_read_paths(ROOT / "plugins" / "persistent", network=False))
    online = set(python_read_paths(ROOT / "plugins" / "persistent", network=True))
    assert offline < online
    if Path("/etc/resolv.conf").exists():
        assert Path("/etc/resolv.conf").resolve() in online - offline
    assert not any(Path("/etc/ssl/private").is_relative_to(p) for p in online)


def test_the_report_is_a_plain_msgpack_dict() -> None:
    report = SandboxReport(7, filesystem=True, network="denied", signals_scoped=True)
    assert msgpack.unpackb(msgpack.packb(report.as_dict())) == {
        "abi": 7, "filesystem": True, "network": "denied", "signals_scoped": True, "reason": "",
    }
