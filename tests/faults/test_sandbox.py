"""The Landlock sandbox and the environment allow-list, proven by the `intruder`
plugin. Each attempt is made with and without the protection: it must work
without (so the test can fail) and be refused with."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import PluginUnavailable, Supervisor, WorkerCrashed
from tests.conftest import FAULT_PLUGINS, PLUGINS, ROOT, copy_plugins, pid_alive
from tests.faults.helpers import set_runtime
from worker import landlock

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(landlock.abi_version() == 0, reason="this kernel has no Landlock: the fallback is tested below"),
]


def make_plugins(tmp_path: Path, **intruder_runtime: Any) -> Path:
    root = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["intruder"])
    copy_plugins(PLUGINS, root, ["persistent"])
    set_runtime(root / "intruder", **intruder_runtime)
    return root


async def start(root: Path, tmp_path: Path, **options: Any) -> Supervisor:
    sup = Supervisor(root, log_dir=tmp_path / "logs", **options)
    await sup.start()
    return sup


@pytest.fixture(params=[False, True], ids=["unsandboxed", "sandboxed"])
async def sup_and_mode(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Supervisor, bool]]:
    sandboxed: bool = request.param
    sup = await start(make_plugins(tmp_path, sandbox=sandboxed), tmp_path)
    try:
        # The sibling's data.db exists and holds a record.
        assert await sup.call("persistent", "save", {"key": "secret", "value": "v"}) == {"saved": True}
        yield sup, sandboxed
    finally:
        await sup.stop()


def proc_status(pid: int | None) -> dict[str, str]:
    """The fields of /proc/<pid>/status, as the kernel sees the process."""
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def refused(outcome: dict[str, Any]) -> bool:
    assert outcome["ok"] or outcome["error"].startswith("PermissionError"), outcome
    return not outcome["ok"]


async def test_reading_another_plugins_database(sup_and_mode: tuple[Supervisor, bool], tmp_path: Path) -> None:
    sup, sandboxed = sup_and_mode
    sibling_db = tmp_path / "plugins" / "persistent" / "data.db"
    assert refused(await sup.call("intruder", "read", {"path": str(sibling_db)})) is sandboxed
    assert refused(await sup.call("intruder", "write", {"path": str(sibling_db.parent / "planted.py")})) is sandboxed


async def test_reading_a_file_outside_its_folder(sup_and_mode: tuple[Supervisor, bool], tmp_path: Path) -> None:
    sup, sandboxed = sup_and_mode
    secret = tmp_path / "host-secret.txt"
    secret.write_text("do not read")
    assert refused(await sup.call("intruder", "read", {"path": str(secret)})) is sandboxed
    assert refused(await sup.call("intruder", "read", {"path": str(tmp_path / "plugins" / "intruder" / "plugin.toml")})) is False


async def test_the_project_checkout_is_not_readable_beyond_its_packages(sup_and_mode: tuple[Supervisor, bool]) -> None:
    # The worker finds our packages through PYTHONPATH=<checkout> (or an editable install):
    # that must grant protocol/ and worker/, not the checkout's .git, tests or plugins.
    sup, sandboxed = sup_and_mode
    checkout = ROOT
    assert refused(await sup.call("intruder", "read", {"path": str(checkout / "pyproject.toml")})) is sandboxed
    assert refused(await sup.call("intruder", "read", {"path": str(checkout / "plugins" / "persistent" / "plugin.toml")})) is sandboxed
    assert refused(await sup.call("intruder", "read", {"path": str(checkout / "worker" / "sdk.py")})) is False


async def test_its_own_folder_stays_writable_for_sqlite(sup_and_mode: tuple[Supervisor, bool]) -> None:
    sup, _ = sup_and_mode
    for n in range(3):
        assert await sup.call("intruder", "store", {"key": "k", "value": f"v{n}"}) == {"ok": True, "value": f"v{n}"}


async def test_signalling_the_supervisor(sup_and_mode: tuple[Supervisor, bool]) -> None:
    sup, sandboxed = sup_and_mode
    expect_scoped = sandboxed and landlock.abi_version() >= 6
    assert refused(await sup.call("intruder", "signal", {"pid": os.getpid()})) is expect_scoped


async def test_the_status_says_what_applied(sup_and_mode: tuple[Supervisor, bool]) -> None:
    sup, sandboxed = sup_and_mode
    report = sup.status("intruder").protections["sandbox"]
    assert (report["abi"] > 0) is sandboxed
    assert report.get("filesystem", False) is sandboxed
    assert sup.status("persistent").protections["sandbox"]["abi"] == 0  # its manifest did not ask
    # Seen from outside, in /proc: a sandboxed worker holds no capability and cannot gain one.
    status = proc_status(sup.status("intruder").pid)
    assert (int(status["CapEff"], 16) == 0) is (sandboxed or os.getuid() != 0)
    assert (status["NoNewPrivs"].strip() == "1") is sandboxed


@pytest.mark.parametrize(("network", "operator_network"), [(False, True), (True, True), (True, False)])
async def test_connecting_out_needs_network(tmp_path: Path, network: bool, operator_network: bool) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        root = make_plugins(tmp_path, sandbox=True, network=network)
        sup = await start(root, tmp_path, network=operator_network)  # the operator's False wins over the plugin's True
        allowed = network and operator_network
        try:
            outcome = await sup.call("intruder", "connect", {"host": "127.0.0.1", "port": port})
            assert refused(outcome) is (not allowed and landlock.abi_version() >= 4)
            assert sup.status("intruder").protections["sandbox"]["network"] == ("allowed" if allowed else "denied")
        finally:
            await sup.stop()


@pytest.mark.parametrize(("manifest", "operator", "applied"), [
    (None, True, True),      # the plugin does not say: the supervisor's default
    (False, True, True),     # a plugin cannot opt out of what the operator asked (it can write its own plugin.toml)
    (True, False, True),     # a plugin can ask for more
    (None, False, False),
])
async def test_the_supervisor_setting_is_a_floor(tmp_path: Path, manifest: bool | None, operator: bool, applied: bool) -> None:
    root = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["intruder"])
    if manifest is not None:
        set_runtime(root / "intruder", sandbox=manifest)
    sup = await start(root, tmp_path, sandbox=operator)
    try:
        assert bool(sup.status("intruder").protections["sandbox"]["abi"]) is applied
    finally:
        await sup.stop()


# -- the environment ------------------------------------------------------------------

@pytest.mark.parametrize("passed_on", [False, True], ids=["allow-list", "explicitly-allowed"])
async def test_host_secrets_never_reach_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passed_on: bool) -> None:
    monkeypatch.setenv("NEKO_SUPERVISOR_TOKEN", "host-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    extra = ["NEKO_SUPERVISOR_TOKEN", "AWS_SECRET_ACCESS_KEY"] if passed_on else []
    sup = await start(make_plugins(tmp_path), tmp_path, env_allow=extra)
    try:
        token = await sup.call("intruder", "env", {"name": "NEKO_SUPERVISOR_TOKEN"})
        aws = await sup.call("intruder", "env", {"name": "AWS_SECRET_ACCESS_KEY"})
        # An operator may pass on a secret of their own by name; the service's API token never.
        assert (token, aws) == ((None, "aws-secret") if passed_on else (None, None))
    finally:
        await sup.stop()


# -- a kernel without Landlock ------------------------------------------------------------

async def test_without_landlock_the_status_and_log_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(landlock.ENV_DISABLE, "off")  # the worker behaves as on a kernel without Landlock
    sup = await start(make_plugins(tmp_path, sandbox=True), tmp_path, env_allow=[landlock.ENV_DISABLE])
    try:
        report = sup.status("intruder").protections["sandbox"]
        assert report["abi"] == 0 and report["reason"]
        assert any("sandbox was requested but is NOT applied" in line for line in sup.logs("intruder"))
        assert sup.status("intruder").state == "running"
    finally:
        await sup.stop()


async def test_a_required_sandbox_refuses_to_start_without_landlock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(landlock.ENV_DISABLE, "off")
    sup = await start(make_plugins(tmp_path, sandbox="required"), tmp_path, env_allow=[landlock.ENV_DISABLE])
    try:
        status = sup.status("intruder")
        assert (status.state, status.restarts) == ("failed", 0)  # at once: retrying cannot help
        assert status.error is not None and 'sandbox = "required"' in status.error
        with pytest.raises(PluginUnavailable):
            await sup.call("intruder", "ping")
        assert await sup.call("persistent", "keys") == {"keys": []}  # the others run on
    finally:
        await sup.stop()


# -- containment inside the sandbox -------------------------------------------------------

@pytest.mark.parametrize("ending", ["stop", "restart", "crash"])
async def test_a_sandboxed_workers_descendants_die_with_it(tmp_path: Path, ending: str) -> None:
    """/proc is closed inside the sandbox: the worker cannot list its children, yet they must die."""
    root = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["hog"])
    set_runtime(root / "hog", sandbox=True, max_restarts=10)
    sup = await start(root, tmp_path, watch_interval=30)  # no snapshot from the watcher: the worker and the kill must do it
    try:
        forked = await sup.call("hog", "fork", {"count": 3})
        escapee = await sup.call("hog", "escape")
        victims = [*forked, escapee]
        assert all(pid_alive(pid) for pid in victims)
        if ending == "stop":
            await sup.stop_plugin("hog")
            exit_info = sup.status("hog").last_exit
            assert exit_info is not None and exit_info.returncode == 0, exit_info  # a clean exit, not a crash on the way out
        elif ending == "restart":
            await sup.restart("hog")
        else:
            with pytest.raises(WorkerCrashed):
                await sup.call("hog", "bomb", {"mb": 1 << 20})  # MemoryError: the worker exits on its own (code 4)
        assert not [pid for pid in victims if pid_alive(pid)]
    finally:
        await sup.stop()


@pytest.mark.parametrize("value", [1, "yes", None, "ON"])
def test_the_supervisor_rejects_a_sandbox_value_it_does_not_know(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match="sandbox must be"):
        Supervisor(tmp_path, sandbox=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "mode"), [(False, "off"), ("off", "off"), (True, "on"), ("on", "on"), ("required", "required")])
async def test_the_supervisor_accepts_the_cli_spellings_too(tmp_path: Path, value: bool | str, mode: str) -> None:
    sup = await start(copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["intruder"]), tmp_path, sandbox=value)
    try:
        assert sup.status("intruder").protections["sandbox"]["requested"] == mode
    finally:
        await sup.stop()
