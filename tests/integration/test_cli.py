"""The command line, run as a user runs it: a real subprocess, real workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAULT_PLUGINS, PLUGINS, ROOT, copy_plugins

pytestmark = pytest.mark.usefixtures("no_leaks")


def cli(*args: str | Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return copy_plugins(PLUGINS, tmp_path / "plugins")


def test_call_prints_only_the_json_value_on_stdout(plugins: Path) -> None:
    saved = cli("call", plugins, "persistent", "save", "--args", '{"key": "k", "value": "v"}')
    assert (saved.returncode, saved.stdout, saved.stderr) == (0, '{"saved": true}\n', "")
    loaded = cli("call", plugins, "persistent", "load", "--args", '{"key": "k"}')
    assert json.loads(loaded.stdout) == {"key": "k", "value": "v"}


def test_call_keeps_plugin_output_off_stdout(tmp_path: Path) -> None:
    faults = copy_plugins(FAULT_PLUGINS, tmp_path / "faults", ["stray_output", "echo"])
    result = cli("call", faults, "stray_output", "os_write")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"ok": True}
    bytes_result = cli("call", faults, "echo", "echo", "--args", '{"value": "a"}')
    assert json.loads(bytes_result.stdout) == "a"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "save"], "no plugin 'nope'"),
        (["persistent", "nope"], "has no entry 'nope'"),
        (["persistent", "save", "--args", "{bad"], "--args is not valid JSON"),
        (["persistent", "save", "--args", "[1, 2]"], "--args must be a JSON object"),
        (["persistent", "save", "--args", '{"key": "k"}'], "missing a required argument: 'value'"),
        (["persistent", "save", "--timeout", "-1"], "--timeout: must be a finite number greater than 0"),
    ],
)
def test_usage_errors_exit_2_with_one_line(plugins: Path, args: list[str], message: str) -> None:
    result = cli("call", plugins, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_call_exits_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    faults = copy_plugins(FAULT_PLUGINS, tmp_path / "faults", ["crash", "busy_loop"])
    crashed = cli("call", faults, "crash", "crash", "--args", '{"code": 9}')
    assert crashed.returncode == 1
    assert crashed.stdout == ""
    assert crashed.stderr.startswith("neko-supervisor: WorkerCrashed: ")
    assert "exited with code 9" in crashed.stderr
    assert "Traceback" not in crashed.stderr and len(crashed.stderr.strip().splitlines()) == 1
    hung = cli("call", faults, "busy_loop", "spin", "--timeout", "0.5")
    assert hung.returncode == 1
    assert "CallTimeout" in hung.stderr


def test_missing_plugins_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("call", tmp_path / "nowhere", "a", "b")
    assert result.returncode == 2
    assert "plugins directory does not exist" in result.stderr


def test_list_shows_every_plugin_with_its_entries(plugins: Path) -> None:
    (plugins / "broken").mkdir()
    (plugins / "broken" / "plugin.toml").write_text('[plugin]\nid = "broken"\n[plugin_runtime]\nrestart = "sometimes"\n')
    result = cli("list", plugins, "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"async_fetch", "broken", "configurable", "persistent", "reliable_fetch", "thread_safe"}
    assert rows["persistent"]["state"] == "running"
    assert {"save", "load", "keys"} <= set(rows["persistent"]["entries"])
    assert rows["broken"]["state"] == "failed"
    assert "plugin_runtime.restart" in rows["broken"]["error"]
    table = cli("list", plugins)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["ID", "NAME", "VERSION", "STATE", "ENTRIES"]
    assert any(line.startswith("persistent") and "save" in line for line in table.stdout.splitlines())


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "neko-supervisor"
    assert script.exists(), "pip install -e . should install the neko-supervisor console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "call" in result.stdout and "list" in result.stdout


def test_sandbox_and_network_flags_are_floors_and_typos_are_reported(tmp_path: Path) -> None:
    faults = copy_plugins(FAULT_PLUGINS, tmp_path / "faults", ["intruder"])
    manifest = faults / "intruder" / "plugin.toml"
    # The plugin asks for no sandbox and for the network, and misspells a key.
    manifest.write_text(manifest.read_text().replace("[plugin_runtime]", "[plugin_runtime]\nsandbox = false\nnetwork = true\nmax_proceses = 4"))
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    plain = cli("call", faults, "intruder", "read", "--args", json.dumps({"path": str(secret)}))
    assert json.loads(plain.stdout) == {"ok": True, "value": 1}
    assert "unknown key plugin_runtime.max_proceses is ignored; did you mean 'max_processes'?" in plain.stderr
    sandboxed = cli("call", faults, "intruder", "read", "--sandbox", "on", "--args", json.dumps({"path": str(secret)}))
    assert json.loads(sandboxed.stdout)["error"].startswith("PermissionError")
    connect = cli("call", faults, "intruder", "connect", "--sandbox", "on", "--no-network", "--args", '{"host": "127.0.0.1", "port": 9}')
    assert json.loads(connect.stdout)["error"].startswith("PermissionError")  # refused by the sandbox, before any packet
