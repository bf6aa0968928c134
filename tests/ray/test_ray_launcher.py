"""Plugins launched on a local Ray cluster: same SDK, same errors, same restarts.

Every test runs real workers, spawned by real Ray actors on the cluster of
`ray_cluster` (conftest.py), with Ray's token authentication on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from protocol import MessageDecoder
from supervisor import (
    CallTimeout,
    PluginStatus,
    PluginUnavailable,
    Supervisor,
    WorkerCrashed,
    process,
)
from supervisor.launchers import LaunchError, channel
from supervisor.launchers.ray import RayLauncher
from supervisor.launchers.relay import MAX_PENDING_ADMISSIONS, WorkerRelay
from tests.conftest import FAULT_PLUGINS, PLUGINS, copy_plugins, pid_alive
from tests.faults.helpers import running_worker, set_runtime, wait_for
from tests.integration.helpers import text_of
from tests.integration.test_service_cli import launch, start_serving
from tests.ray.conftest import Cluster, start_node, stop_node

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fault_plugins(tmp_path: Path) -> Path:
    return copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo", "crash", "async_hang", "hog"])


@pytest.fixture
async def sup(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as supervisor:
        yield supervisor


def actor_process_of(worker_pid: int) -> psutil.Process:
    """The Ray actor's process that spawned this worker (its parent, on this one-machine cluster)."""
    parent = psutil.Process(worker_pid).parent()
    assert parent is not None and "ray" in " ".join(parent.cmdline()).lower(), parent
    return parent


def on_node(pid: int, node: subprocess.Popen[bytes]) -> bool:
    """Whether the process runs under this node's `ray start` (its raylet started the actor)."""
    return any(parent.pid == node.pid for parent in psutil.Process(pid).parents())


async def test_plugins_run_on_the_cluster_each_in_its_own_actor(sup: Supervisor) -> None:
    statuses = {status.id: status for status in sup.statuses()}
    assert {status.state for status in statuses.values()} == {"running"}
    for status in statuses.values():
        assert status.where is not None and status.where.startswith("ray node "), status.where
    assert await sup.call("echo", "echo", {"value": {"a": [1, 2.5, None, "é"]}}) == {"a": [1, 2.5, None, "é"]}
    assert await sup.call("echo", "aecho", {"value": b"\x00bytes"}) == b"\x00bytes"
    # One worker per plugin, each the child of its own actor process.
    pids = [status.pid for status in statuses.values()]
    assert None not in pids and len(set(pids)) == len(pids)
    actors = {actor_process_of(pid).pid for pid in pids if pid is not None}
    assert len(actors) == len(pids)
    # Many calls in flight through one relay, answered each with its own value.
    values = await asyncio.gather(*(sup.call("echo", "aecho", {"value": i}) for i in range(200)))
    assert values == list(range(200))


async def test_no_ray_variable_or_token_reaches_the_worker(sup: Supervisor, ray_cluster: Cluster, fault_plugins: Path) -> None:
    seen = await sup.call("echo", "whoami")
    leaked = sorted(key for key in seen["env"] if key.startswith("RAY_") or ray_cluster.token in seen["env"][key])
    assert not leaked, leaked
    # It runs in its plugin's folder as Ray unpacked it on the node, not in the host's copy.
    assert Path(seen["cwd"]).name == "echo" and Path(seen["cwd"]) != fault_plugins / "echo"
    assert (Path(seen["cwd"]) / "plugin.toml").read_text() == (fault_plugins / "echo" / "plugin.toml").read_text()


async def test_a_crash_fails_the_call_with_worker_crashed_and_the_plugin_restarts(sup: Supervisor) -> None:
    first = sup.status("crash").pid
    assert first is not None
    actor = actor_process_of(first)
    with pytest.raises(WorkerCrashed) as caught:
        await sup.call("crash", "crash", {"code": 7}, timeout=20)
    assert caught.value.exit is not None and caught.value.exit.exit_code == 7
    await sup.wait_for_state("crash", "running", timeout=30)
    assert await sup.call("crash", "ping") == "pong"
    status = sup.status("crash")
    assert status.restarts == 1 and status.pid != first and status.pid is not None
    assert not pid_alive(first)
    # The plugin's actor spawned the new worker: no new Ray worker process to start, same node.
    assert actor_process_of(status.pid).pid == actor.pid


async def test_a_hang_past_its_timeout_is_a_call_timeout_and_the_worker_is_replaced(sup: Supervisor) -> None:
    first = sup.status("async_hang").pid
    with pytest.raises(CallTimeout):
        await sup.call("async_hang", "hang_ignoring_cancel", timeout=0.5)
    # It swallows the cancel: the worker is killed after the grace and restarted.
    await running_worker(sup, "async_hang", first, timeout=30)
    assert await sup.call("async_hang", "ping") == "pong"
    assert sup.status("async_hang").restarts == 1
    # A cancellable hang is only a timeout: the same worker serves the next call.
    pid = sup.status("async_hang").pid
    with pytest.raises(CallTimeout):
        await sup.call("async_hang", "hang", timeout=0.3)
    assert await sup.call("async_hang", "ping") == "pong"
    assert sup.status("async_hang").pid == pid


async def test_a_sigkilled_worker_is_a_crash_and_recovers(sup: Supervisor) -> None:
    pid = sup.status("echo").pid
    assert pid is not None
    call = asyncio.ensure_future(sup.call("echo", "asleep", {"seconds": 30}, timeout=60))
    async with asyncio.timeout(10):
        while sup.status("echo").in_flight == 0:  # noqa: ASYNC110 - waiting for the call to be in flight
            await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as caught:
        await call
    assert caught.value.exit is not None and caught.value.exit.signal == signal.SIGKILL
    await sup.wait_for_state("echo", "running", timeout=30)
    assert await sup.call("echo", "echo", {"value": 1}) == 1


async def test_killing_the_actors_process_is_a_crash_and_recovers(sup: Supervisor) -> None:
    pid = sup.status("echo").pid
    assert pid is not None
    actor = actor_process_of(pid)
    call = asyncio.ensure_future(sup.call("echo", "asleep", {"seconds": 30}, timeout=60))
    async with asyncio.timeout(10):
        while sup.status("echo").in_flight == 0:  # noqa: ASYNC110 - waiting for the call to be in flight
            await asyncio.sleep(0.01)
    actor.kill()
    with pytest.raises(WorkerCrashed) as caught:
        await call
    assert caught.value.exit is not None and "Ray actor" in caught.value.exit.reason
    await sup.wait_for_state("echo", "running", timeout=30)
    assert await sup.call("echo", "echo", {"value": 2}) == 2
    assert sup.status("echo").restarts == 1
    # The old worker died with its actor (PR_SET_PDEATHSIG).
    await asyncio.to_thread(psutil.wait_procs, [psutil.Process(pid)] if pid_alive(pid) else [], 10)
    assert not pid_alive(pid)


async def test_a_call_that_times_out_while_its_relay_is_frozen_is_killed_through_ray(sup: Supervisor) -> None:
    """The actor's process and the worker stop answering (SIGSTOP) but Ray sees nothing wrong:
    the call's deadline is a CallTimeout as locally, the kill the actor cannot answer ends the
    actor, and the plugin restarts."""
    pid = sup.status("echo").pid
    assert pid is not None
    frozen = [actor_process_of(pid), psutil.Process(pid)]
    call = asyncio.ensure_future(sup.call("echo", "asleep", {"seconds": 30}, timeout=1))
    await wait_for(lambda: sup.status("echo").in_flight == 1)
    for proc in frozen:
        proc.suspend()
    try:
        with pytest.raises(CallTimeout):
            await call
        new_pid = await running_worker(sup, "echo", pid, timeout=60)
        assert new_pid != pid and await sup.call("echo", "echo", {"value": "after"}) == "after"
    finally:
        for proc in frozen:
            with contextlib.suppress(psutil.Error):
                proc.resume()
    await asyncio.to_thread(psutil.wait_procs, [proc for proc in frozen if proc.is_running()], 10)
    assert not any(pid_alive(proc.pid) for proc in frozen)


async def test_a_memory_limit_is_enforced_on_the_node(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    set_runtime(fault_plugins / "hog", memory_limit_mb=128)
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        await wait_for(lambda: sup.status("hog").memory_rss is not None)  # measured on the node, reported through the relay
        with pytest.raises(WorkerCrashed) as caught:
            await sup.call("hog", "grow", {"mb": 1024, "pause": 0.01}, timeout=60)
        assert caught.value.exit is not None and "memory limit hit" in caught.value.exit.reason, caught.value.exit
        assert "plugin_runtime.memory_limit_mb = 128" in caught.value.exit.reason
        await sup.wait_for_state("hog", "running", timeout=30)
        assert await sup.call("hog", "ping") == "pong"


async def test_a_stop_runs_the_shutdown_and_leaves_no_worker(sup: Supervisor) -> None:
    pid = sup.status("echo").pid
    assert pid is not None
    actor = actor_process_of(pid)
    await sup.stop_plugin("echo")
    assert sup.status("echo").state == "stopped"
    assert sup.status("echo").last_exit is not None and sup.status("echo").last_exit.exit_code == 0
    assert not pid_alive(pid)
    await asyncio.to_thread(psutil.wait_procs, [actor], 15)
    assert not pid_alive(actor.pid)  # the actor goes with its worker
    with pytest.raises(PluginUnavailable):
        await sup.call("echo", "ping")


async def test_local_and_ray_plugins_in_one_supervisor(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    set_runtime(fault_plugins / "crash", launcher="local")
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        assert sup.status("crash").where == "local"
        assert psutil.Process(sup.status("crash").pid).ppid() == os.getpid()
        assert (sup.status("echo").where or "").startswith("ray node ")
        assert await sup.call("crash", "ping") == "pong"
        assert await sup.call("echo", "echo", {"value": "both"}) == "both"
        with pytest.raises(WorkerCrashed):
            await sup.call("crash", "crash")
        await sup.wait_for_state("crash", "running", timeout=30)
        assert sup.status("crash").where == "local" and await sup.call("echo", "ping") == "pong"


async def test_placement_that_no_node_can_meet_fails_with_what_it_asked_for(
    fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path
) -> None:
    set_runtime(fault_plugins / "crash", num_gpus=2, timeout=3, restart="never", max_restarts=0)  # the cluster has 1
    set_runtime(fault_plugins / "hog", node_labels={"zone": "nowhere"}, timeout=3, restart="never", max_restarts=0)
    set_runtime(fault_plugins / "async_hang", node_labels={"zone": "head"}, num_cpus=0.5)
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        crash, hog = sup.status("crash"), sup.status("hog")
        assert crash.state == "failed" and "num_gpus = 2" in (crash.error or ""), crash.error
        assert "GPU 1" in (crash.error or "")  # what the cluster has free
        assert hog.state == "failed" and "node_labels = {zone = 'nowhere'}" in (hog.error or ""), hog.error
        # A label the head node carries places the plugin there.
        assert sup.status("async_hang").state == "running"
        assert await sup.call("async_hang", "ping") == "pong"
        assert await sup.call("echo", "ping") == "pong"  # the others were never held up


async def test_the_same_plugin_code_runs_the_seed_examples_on_ray(ray_cluster: Cluster, tmp_path: Path) -> None:
    plugins = copy_plugins(PLUGINS, tmp_path / "plugins")
    async with Supervisor(plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        assert {status.id: status.state for status in sup.statuses() if status.state != "running"} == {}
        assert await sup.call("thread_safe", "update", {"key": "k", "value": "v"}) == {"updated": True}
        assert await sup.call("thread_safe", "get", {"key": "k"}) == {"value": "v"}
        assert await sup.call("reliable_fetch", "flaky", {"fail_times": 2}) == {"attempts": 3}
        assert await sup.call("configurable", "set_config", {"key": "mode", "value": "ray"}) == {"timeout": 30, "mode": "ray"}
        assert await sup.call("persistent", "save", {"key": "a", "value": "first"}) == {"saved": True}
        # data.db lives on the node, in the plugin's unpacked folder: it survives a restart there.
        await sup.restart("persistent")
        assert await sup.call("persistent", "load", {"key": "a"}) == {"key": "a", "value": "first"}
        assert not (plugins / "persistent" / "data.db").exists()  # the host's copy is untouched


async def test_serve_with_ray_runs_the_plugins_on_the_cluster(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    """`neko-supervisor serve PLUGINS --ray ADDRESS`: the host service, its workers on Ray."""
    served = await start_serving(
        fault_plugins, tmp_path, "--ray", ray_cluster.address, "--ray-channel-ports", "25020-25039", env={"NEKO_SUPERVISOR_TOKEN": "t" * 32}
    )
    try:
        status, plugins = await served.request("GET", "/v1/plugins")
        assert status == 200
        where = {plugin["id"]: plugin["where"] for plugin in plugins["plugins"]}
        assert all((place or "").startswith("ray node ") for place in where.values()), where
        channels = [
            conn for conn in psutil.Process(served.process.pid).net_connections(kind="tcp")
            if conn.raddr and 25020 <= conn.raddr.port <= 25039 and conn.status == psutil.CONN_ESTABLISHED
        ]
        assert len(channels) == len(where), channels  # --ray-channel-ports: every worker's channel in the range
        assert await served.request("POST", "/v1/plugins/echo/entries/echo", {"value": [1, "two"]}) == (200, {"ok": True, "value": [1, "two"]})
        status, answer = await served.request("POST", "/v1/plugins/crash/entries/crash", {"code": 3})
        assert (status, answer["error"]["type"]) == (502, "WorkerCrashed"), answer
        pids = [plugin["pid"] for plugin in plugins["plugins"]]
    finally:
        code = await served.signal_and_wait(signal.SIGTERM, timeout=30)
    assert code == 0, text_of(served.stderr_path)
    for pid in pids:
        assert pid is None or not pid_alive(pid)


async def test_stopping_a_plugin_while_ray_looks_for_a_node_ends_the_launch(
    fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path
) -> None:
    set_runtime(fault_plugins / "crash", num_gpus=1, timeout=60, auto_start=False)  # no node has a GPU: the launch waits
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        assert await sup.call("echo", "ping") == "pong"
        starting = asyncio.ensure_future(sup.start_plugin("crash"))
        await sup.wait_for_state("crash", "starting", timeout=10)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await sup.stop_plugin("crash")
        assert loop.time() - began < 10  # not the 60 s of plugin_runtime.timeout
        await starting  # returns once the start settled: here, by the stop
        status = sup.status("crash")
        assert status.state == "stopped" and status.pid is None
        assert await sup.call("echo", "ping") == "pong"


def freeze(node: subprocess.Popen[bytes]) -> None:
    """SIGSTOP every process of a node (raylet, actors, workers): they keep their connections open and say nothing."""
    for proc in [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            proc.suspend()


def node_id_of(status: PluginStatus) -> str:
    """The (leading 12 characters of the) id of the node a status says its worker runs on."""
    assert status.where is not None and status.where.startswith("ray node "), status.where
    return status.where.rsplit("(", 1)[1].rstrip(")")


async def declared_dead(node_id: str) -> None:
    """Until Ray's health checks have declared the node dead: until then Ray may still send new
    actors to it (they die with it), as it would on a real cluster."""
    await wait_for(lambda: not any(node["Alive"] for node in ray.nodes() if node["NodeID"].startswith(node_id)), timeout=30)


@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_a_lost_node_is_a_crash_and_the_plugin_restarts_on_another_node(
    how: str, fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path
) -> None:
    """A node is lost with a call in flight: SIGKILLed (its connections close), or frozen (a
    partition, as near as one machine gets: the worker's connection stays open and silent, and
    Ray's health checks declare the node dead). WorkerCrashed, then the plugin restarts under
    its policy on the next node that can take it."""
    zone = f"lost-{how}"
    set_runtime(fault_plugins / "echo", node_labels={"zone": zone}, timeout=5)
    join = ("--address", ray_cluster.address, "--num-cpus", "2", "--labels", f"zone={zone}")
    nodes = [start_node(ray_cluster.env, ray_cluster.temp_dir, f"{zone}-1", *join)]
    try:
        async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
            first = sup.status("echo")
            assert first.state == "running" and first.pid is not None and first.where is not None
            assert on_node(first.pid, nodes[0])  # node_labels placed it on that node
            call = asyncio.ensure_future(sup.call("echo", "asleep", {"seconds": 60}, timeout=90))
            await wait_for(lambda: sup.status("echo").in_flight == 1)
            stop_node(nodes[0]) if how == "killed" else freeze(nodes[0])
            with pytest.raises(WorkerCrashed) as caught:
                await asyncio.wait_for(call, 30)
            reason = caught.value.exit.reason if caught.value.exit is not None else None
            assert reason is not None and "Ray actor relaying it died" in reason, reason
            if how == "frozen":
                assert "channel closed" not in reason  # Ray's word (the standing wait_exit call failed)
            else:
                assert not pid_alive(first.pid)
            await declared_dead(node_id_of(first))  # the replacement comes after, as it would
            nodes.append(start_node(ray_cluster.env, ray_cluster.temp_dir, f"{zone}-2", *join))
            await running_worker(sup, "echo", first.pid, timeout=60)
            second = sup.status("echo")
            assert second.pid is not None and on_node(second.pid, nodes[1]) and second.where != first.where
            assert await sup.call("echo", "echo", {"value": "back"}) == "back"
            assert await sup.call("crash", "ping") == "pong"  # the head's plugins never noticed
            stop_node(nodes[1])
            await declared_dead(node_id_of(second))  # the next test starts on a settled cluster
        # Stopped with a restart under way: no Ray call after the launcher closed (Ray would
        # start a new local instance in this process for it).
        assert not ray.is_initialized()
    finally:
        for node in nodes:
            stop_node(node)


async def test_a_spare_worker_on_ray_takes_over_after_a_crash(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    set_runtime(fault_plugins / "crash", spare_worker=True)
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        await wait_for(lambda: sup.status("crash").spare_pid is not None, timeout=30)
        spare = sup.status("crash").spare_pid
        first = sup.status("crash").pid
        with pytest.raises(WorkerCrashed):
            await sup.call("crash", "crash")
        assert await running_worker(sup, "crash", first, timeout=30) == spare  # the spare took over
        assert await sup.call("crash", "ping") == "pong"
        assert (sup.status("crash").where or "").startswith("ray node ")


async def test_the_fault_toolkit_works_through_the_relay(sup: Supervisor) -> None:
    """Plugin authors test under faults on Ray as locally: kill in the entry, freeze past a timeout, kill now."""
    chaos = sup.chaos("echo")
    first = sup.status("echo").pid
    chaos.kill_next_call("in_entry", entry="echo")
    with pytest.raises(WorkerCrashed):
        await sup.call("echo", "echo", {"value": 1})
    second = await running_worker(sup, "echo", first, timeout=30)
    chaos.freeze()  # SIGSTOP through the actor: the call cannot finish, nor be cancelled
    with pytest.raises(CallTimeout):
        await sup.call("echo", "echo", {"value": 2}, timeout=0.5)
    third = await running_worker(sup, "echo", second, timeout=30)  # killed after cancel_grace, restarted
    chaos.kill()
    await running_worker(sup, "echo", third, timeout=30)
    assert await sup.call("echo", "echo", {"value": 3}) == 3
    assert [injection.kind for injection in chaos.injections] == ["kill_in_entry", "freeze", "kill"]


async def test_a_plugin_that_asks_for_a_gpu_sees_the_one_ray_gave_it(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    set_runtime(fault_plugins / "echo", num_gpus=1)
    async with Supervisor(fault_plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        seen = (await sup.call("echo", "whoami"))["env"]
        assert seen.get("CUDA_VISIBLE_DEVICES") == "0", sorted(seen)


async def test_the_children_of_a_worker_whose_actor_died_are_killed_on_its_node(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["grandchild"])
    async with Supervisor(plugins, launcher=RayLauncher(ray_cluster.address), log_dir=tmp_path / "logs") as sup:
        worker = sup.status("grandchild").pid
        assert worker is not None
        children = [psutil.Process(pid) for pid in (await sup.call("grandchild", "spawn"))["pids"]]
        actor_process_of(worker).kill()
        await running_worker(sup, "grandchild", worker, timeout=30)
        _, alive = await asyncio.to_thread(psutil.wait_procs, children, 10)
        assert not [proc.pid for proc in alive if pid_alive(proc.pid)]
        assert await sup.call("grandchild", "ping") == "pong"


async def test_serve_with_an_address_nobody_answers_fails_at_once_naming_it(fault_plugins: Path, tmp_path: Path) -> None:
    process = await launch(fault_plugins, tmp_path, "--ray", "127.0.0.1:1")
    async with asyncio.timeout(30):
        code = await process.wait()
    assert code == 2
    message = text_of(tmp_path / "serve.stderr")
    assert "--ray 127.0.0.1:1" in message and "nothing answers there" in message, message


async def test_a_launcher_without_an_address_starts_a_local_cluster_that_lives(fault_plugins: Path, tmp_path: Path) -> None:
    """RayLauncher(None): ray.init starts a one-node cluster from the joining thread, whose end
    must not take the cluster's processes with it (they die with their parent thread)."""
    launcher = RayLauncher(None)
    async with Supervisor(fault_plugins, launcher=launcher, log_dir=tmp_path / "logs") as sup:
        assert await sup.call("echo", "echo", {"value": 1}) == 1
        own_cluster = ray.get_runtime_context().gcs_address
        # Long after the join: the cluster still answers, a restart still finds a node.
        pid = sup.status("echo").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await running_worker(sup, "echo", pid, timeout=30)
        assert await sup.call("echo", "echo", {"value": 2}, timeout=20) == 2
    assert own_cluster and not ray.is_initialized()  # closed with the supervisor


async def test_large_values_cross_the_relay_whole_and_in_order(sup: Supervisor) -> None:
    """Frames larger than a pipe's buffer go partly at once and partly through the writer thread."""
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB
    assert await sup.call("echo", "echo", {"value": big}, timeout=60) == big
    values = [bytes([i]) * (1 << 20) + str(i).encode() for i in range(16)]
    assert await asyncio.gather(*(sup.call("echo", "aecho", {"value": v}, timeout=60) for v in values)) == values


async def read_events(reader: asyncio.StreamReader, until: int) -> list[tuple[Any, ...]]:
    """The relay's events on a channel, up to the first of kind `until` (OUT: (OUT, the name of each message))."""
    seen: list[tuple[Any, ...]] = []
    messages = MessageDecoder(1 << 20)
    decoder = channel.Decoder(
        {channel.OUT: lambda data: seen.extend((channel.OUT, type(m).__name__) for m in messages.feed(data)), channel.ERR: lambda data: None},
        {
            kind: (lambda *values, kind=kind: seen.append((kind, *values)))
            for kind in (channel.ADMITTED, channel.OUT_EOF, channel.ERR_EOF, channel.USAGE, channel.EXIT)
        },
    )
    async with asyncio.timeout(30):
        while not any(event[0] == until for event in seen):
            data = await reader.read(1 << 16)
            assert data, f"the channel closed before event {until}: {seen}"
            decoder.feed(data)
    return seen


async def test_a_workers_channel_opens_only_to_the_token_its_relay_was_given(sup: Supervisor) -> None:
    """The relay's port (on its node's address) takes the one connection that starts with the
    token given through Ray and says so (ADMITTED); silent or wrong ones are dropped and hold up
    nobody; then it stops listening."""
    relay: Any = ray.remote(WorkerRelay).options(num_cpus=0, max_concurrency=8).remote("echo", 0, None)
    token, tag = secrets.token_bytes(channel.TOKEN_SIZE), f"channel-test-{secrets.token_hex(4)}"
    info = await relay.spawn.remote(process.worker_args(1 << 20), [], tag, token)
    address = (info["node_ip"], info["port"])
    opened: list[asyncio.StreamWriter] = []
    try:
        # More connections that say nothing than may wait at once: the oldest are pushed out,
        # and none of them keeps the right one out.
        silent = [await asyncio.open_connection(*address) for _ in range(MAX_PENDING_ADMISSIONS + 4)]
        opened += [writer for _, writer in silent]
        async with asyncio.timeout(10):
            assert [await reader.read() for reader, _ in silent[:4]] == [b""] * 4
        wrong_reader, wrong = await asyncio.open_connection(*address)
        opened.append(wrong)
        wrong.write(bytes(channel.TOKEN_SIZE))
        async with asyncio.timeout(10):
            assert await wrong_reader.read() == b""  # dropped, nothing sent to it
        reader, writer = await asyncio.open_connection(*address)
        opened.append(writer)
        writer.write(token)
        events = await read_events(reader, until=channel.OUT)
        assert events[0] == (channel.ADMITTED,) and (channel.OUT, "Hello") in events  # admitted, then the worker's first frame
        with pytest.raises(ConnectionRefusedError):  # no longer listening
            await asyncio.open_connection(*address)
        writer.write(channel.message(channel.IN_EOF))  # its stdin closes: the worker ends
        events = await read_events(reader, until=channel.EXIT)
        assert events[-1][0] == channel.EXIT and isinstance(events[-1][1], int)
        assert (channel.OUT_EOF,) in events
    finally:
        for stream in opened:
            stream.close()
        await relay.cleanup.remote(tag)
        ray.kill(relay)
    assert not pid_alive(info["pid"])


CHANNEL_PORTS = (25000, 25019)  # below Linux's ephemeral ports, above Ray's worker ports: nothing else connects there


async def test_channel_ports_bound_the_ports_the_relays_listen_on(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    """A firewall that opens only some ports: each worker's channel is on one of them."""
    launcher = RayLauncher(ray_cluster.address, channel_ports=CHANNEL_PORTS)
    async with Supervisor(fault_plugins, launcher=launcher, log_dir=tmp_path / "logs") as sup:
        assert {status.state for status in sup.statuses()} == {"running"}
        assert await sup.call("echo", "echo", {"value": "through a chosen port"}) == "through a chosen port"
        channels = [
            conn for conn in psutil.Process().net_connections(kind="tcp")
            if conn.raddr and CHANNEL_PORTS[0] <= conn.raddr.port <= CHANNEL_PORTS[1] and conn.status == psutil.CONN_ESTABLISHED
        ]
        assert len(channels) == len(sup.statuses()), channels  # one per worker, every one in the range


async def test_a_port_range_with_no_free_port_fails_the_start_saying_so(fault_plugins: Path, ray_cluster: Cluster, tmp_path: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:  # listening on every address: the node's too
        port = taken.getsockname()[1]
        set_runtime(fault_plugins / "echo", restart="never", max_restarts=0)
        launcher = RayLauncher(ray_cluster.address, channel_ports=(port, port))
        async with Supervisor(fault_plugins, launcher=launcher, log_dir=tmp_path / "logs") as sup:
            status = sup.status("echo")
            assert status.state == "failed" and f"no free port in {port}-{port}" in (status.error or ""), status


def test_channel_ports_must_be_a_range_of_ports() -> None:
    for bad in [(0, 10), (10, 5), (1, 70000), (1,), "1-2", (1.5, 2), (True, 2)]:
        with pytest.raises(ValueError, match="channel_ports must be"):
            RayLauncher("127.0.0.1:1", channel_ports=bad)  # type: ignore[arg-type]


async def test_a_cluster_with_ray_tls_on_is_refused_before_any_plugin_data_crosses_it(
    fault_plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channels are not encrypted: where Ray's own traffic is, the launcher says so instead
    of sending the plugins' calls in the clear."""
    monkeypatch.setenv("RAY_USE_TLS", "1")
    launcher = RayLauncher("127.0.0.1:1")  # never contacted
    with pytest.raises(LaunchError, match="RAY_USE_TLS is on") as caught:
        await launcher.connect(fault_plugins)
    assert caught.value.permanent
