"""`spare_worker = true`: a worker waits, started short of loading the plugin, and takes over on a restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from protocol import DEFAULT_MAX_FRAME_SIZE, Ping, encode_message
from protocol.exits import EXIT_OK, EXIT_PROTOCOL_ERROR
from supervisor import ProtocolError, Supervisor, WorkerCrashed, process, slot
from supervisor.manifest import load_manifest
from tests.conftest import FAULT_PLUGINS, copy_plugins, pid_alive
from tests.faults.helpers import set_runtime
from tests.integration.helpers import make_plugin, wait_for

pytestmark = pytest.mark.usefixtures("no_leaks")

FRAGILE = """
    from pathlib import Path

    from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry

    if (Path(__file__).parent / "broken").exists():
        raise RuntimeError("cannot import me now")

    @neko_plugin
    class Fragile(NekoPluginBase):
        @plugin_entry(id="ping")
        def ping(self, **_):
            return "pong"
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    root = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"])
    set_runtime(root / "echo", spare_worker=True, max_restarts=20)
    return root


async def spare_of(sup: Supervisor, plugin_id: str) -> int:
    await wait_for(lambda: sup.status(plugin_id).spare_pid is not None)
    spare = sup.status(plugin_id).spare_pid
    assert spare is not None
    return spare


async def test_a_spare_takes_over_after_a_crash_and_another_is_made(plugins: Path) -> None:
    async with Supervisor(plugins, log_dir=False) as sup:
        for _ in range(3):
            worker, spare = sup.status("echo").pid, await spare_of(sup, "echo")
            assert worker is not None and spare != worker and pid_alive(spare)
            os.kill(worker, signal.SIGKILL)
            # pid None: the old worker is dead while its remains are collected, the new one not yet ready.
            await wait_for(lambda w=worker: sup.status("echo").state == "running" and sup.status("echo").pid not in (None, w))
            assert sup.status("echo").pid == spare, sup.logs("echo", 30)  # the spare became the worker
            assert await sup.call("echo", "echo", {"value": "after"}) == "after"
        assert sup.status("echo").restarts == 3
        assert f"[supervisor] worker {spare} started" in sup.logs("echo")


async def test_without_the_key_there_is_no_spare(tmp_path: Path) -> None:
    async with Supervisor(copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"]), log_dir=False) as sup:
        assert sup.status("echo").spare_pid is None
        assert not any("spare" in line for line in sup.logs("echo"))


async def test_stop_dismisses_the_spare_and_kill_kills_it(plugins: Path) -> None:
    async with Supervisor(plugins, log_dir=False) as sup:
        spare = await spare_of(sup, "echo")
        await sup.stop_plugin("echo")
        assert not pid_alive(spare) and sup.status("echo").spare_pid is None
        assert f"[supervisor] spare worker {spare} exited with code 0 (spare dismissed)" in sup.logs("echo")
        await sup.start_plugin("echo")
        worker, spare = sup.status("echo").pid, await spare_of(sup, "echo")
        await sup.kill()
        assert worker is not None and not pid_alive(worker) and not pid_alive(spare)


async def test_a_dead_spare_is_no_loss(plugins: Path) -> None:
    async with Supervisor(plugins, log_dir=False) as sup:
        spare = await spare_of(sup, "echo")
        os.kill(spare, signal.SIGKILL)
        await wait_for(lambda: sup.status("echo").spare_pid is None)  # seen dead by the slot
        worker = sup.status("echo").pid
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        await wait_for(lambda: sup.status("echo").state == "running" and sup.status("echo").pid not in (None, worker))
        assert sup.status("echo").pid != spare  # a fresh worker, spawned as usual
        assert sup.status("echo").restarts == 1  # one crash, no failed start on the way
        assert not any("start failed" in line for line in sup.logs("echo"))
        assert f"[supervisor] spare worker {spare} killed by SIGKILL (crashed)" in sup.logs("echo")


async def test_a_spare_killed_while_it_waits_is_replaced(plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot, "SPARE_MIN_LIFE", 0.0)  # replaced however short its life
    async with Supervisor(plugins, log_dir=False) as sup:
        first = await spare_of(sup, "echo")
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: sup.status("echo").spare_pid not in (None, first))
        assert sup.status("echo").restarts == 0 and sup.status("echo").state == "running"


@pytest.mark.parametrize("ending", ["restart_never", "budget_spent"])
async def test_no_spare_outlives_a_plugin_that_gave_up(tmp_path: Path, ending: str) -> None:
    root = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["crash"])
    set_runtime(root / "crash", spare_worker=True, **({"restart": "never"} if ending == "restart_never" else {"max_restarts": 1}))
    async with Supervisor(root, log_dir=False) as sup:
        spares = []
        if ending == "restart_never":
            assert not any("spare" in line for line in sup.logs("crash"))  # no restart could use one
        while sup.status("crash").state != "failed":
            if ending == "budget_spent":
                spares.append(await spare_of(sup, "crash"))
            with pytest.raises(WorkerCrashed):
                await sup.call("crash", "crash", {"code": 3})
            await sup.wait_for_state("crash", "running", "failed")
        # The supervision loop ends right after the plugin is marked failed, and its spare with it.
        await wait_for(lambda: sup.status("crash").spare_pid is None and not any(pid_alive(pid) for pid in spares))


async def test_an_injected_spawn_failure_lands_on_the_takeover_not_on_the_spare(plugins: Path) -> None:
    async with Supervisor(plugins, log_dir=False) as sup:
        spare = await spare_of(sup, "echo")
        sup.chaos("echo").fail_spawns(1)
        worker = sup.status("echo").pid
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        await wait_for(lambda: sup.status("echo").state == "running" and sup.status("echo").pid not in (None, worker, spare))
        assert [i.kind for i in sup.status("echo").injections] == ["fail_spawn"]
        assert sup.status("echo").restarts == 2  # the crash, then the failed start the policy saw
        assert any("start failed: chaos" in line for line in sup.logs("echo"))
        assert not pid_alive(spare)


async def test_a_frame_fault_is_for_the_worker_not_for_the_spare(plugins: Path) -> None:
    async with Supervisor(plugins, log_dir=False) as sup:
        sup.chaos("echo").corrupt_next("from_worker")  # armed before the spare says hello
        spare, worker = await spare_of(sup, "echo"), sup.status("echo").pid
        with pytest.raises(ProtocolError):
            await sup.call("echo", "ping")  # the worker's answer took it
        await wait_for(lambda: sup.status("echo").state == "running" and sup.status("echo").pid not in (None, worker))
        assert sup.status("echo").pid == spare and await sup.call("echo", "ping") == "pong"


async def test_a_spare_started_on_a_replaced_folder_is_not_used(plugins: Path) -> None:
    """A deploy swaps the folder (rename the old one away, move the new one in)."""
    async with Supervisor(plugins, log_dir=False) as sup:
        spare = await spare_of(sup, "echo")
        folder = plugins / "echo"
        folder.rename(plugins.parent / "echo-old")
        shutil.copytree(plugins.parent / "echo-old", folder)
        worker = sup.status("echo").pid
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        await wait_for(lambda: sup.status("echo").state == "running" and sup.status("echo").pid not in (None, worker))
        assert sup.status("echo").pid != spare and not pid_alive(spare)
        assert sup.status("echo").restarts == 1 and not any("start failed" in line for line in sup.logs("echo"))
        assert (await sup.call("echo", "whoami"))["cwd"] == str(folder)  # the new folder, not the one renamed away


async def test_a_spare_that_cannot_load_the_plugin_counts_as_a_failed_start(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    folder = make_plugin(root, "fragile", {"__init__.py": FRAGILE}, entry="fragile:Fragile", spare_worker=True, max_restarts=1)
    async with Supervisor(root, log_dir=False) as sup:
        spare = await spare_of(sup, "fragile")
        (folder / "broken").write_text("")  # the next import raises
        worker = sup.status("fragile").pid
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        await sup.wait_for_state("fragile", "failed")
        assert "cannot import me now" in (sup.status("fragile").error or "")
        assert not pid_alive(spare)


@pytest.mark.parametrize(("send", "code"), [(b"", EXIT_OK), (encode_message(Ping(1), DEFAULT_MAX_FRAME_SIZE), EXIT_PROTOCOL_ERROR)])
def test_a_spare_waits_for_activate_and_nothing_else(tmp_path: Path, send: bytes, code: int) -> None:
    """On EOF it leaves quietly; any other frame is a protocol error (exit 6)."""
    folder = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"]) / "echo"
    command = process.worker_command(folder, DEFAULT_MAX_FRAME_SIZE, load_manifest(folder / "plugin.toml").runtime, standby=True)
    ended = subprocess.run(command, input=send, capture_output=True, cwd=folder, env=process.worker_env(), timeout=20)
    assert ended.returncode == code, ended.stderr.decode()[-2000:]
    assert b"hello" in ended.stdout[:200] and b"ready" not in ended.stdout  # it never loaded the plugin
