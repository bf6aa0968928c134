"""Every example of the seed page (advanced-topics.md), run end to end in real workers.

Each test runs a Supervisor on a private copy of plugins/ (the `seed_plugins`
fixture), so runtime files (config.json, data.db) land in tmp_path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web

from supervisor import EntryFailed, Supervisor
from tests.conftest import pid_alive
from tests.integration.helpers import same_path

pytestmark = pytest.mark.usefixtures("no_leaks")

PAYLOAD = {"name": "neko", "items": [1, 2, 3], "nested": {"ok": True, "ratio": 0.5}}

SEED_ENTRIES = {
    "async_fetch": {"async_task"},
    "thread_safe": {"update", "get", "snapshot"},
    "reliable_fetch": {"reliable_fetch", "reliable_fetch_aiohttp", "flaky"},
    "configurable": {"get_config", "set_config"},
    "persistent": {"save", "load", "keys"},
}


class JsonServer:
    """A local HTTP server: /data always answers PAYLOAD; /flaky answers 500 twice, then PAYLOAD."""

    def __init__(self) -> None:
        self.flaky_hits = 0
        self.app = web.Application()
        self.app.router.add_get("/data", self.data)
        self.app.router.add_get("/flaky", self.flaky)
        self.base_url = ""

    async def data(self, request: web.Request) -> web.Response:
        return web.json_response(PAYLOAD)

    async def flaky(self, request: web.Request) -> web.Response:
        self.flaky_hits += 1
        if self.flaky_hits <= 2:
            return web.json_response({"error": "try again"}, status=500)
        return web.json_response(PAYLOAD)


@pytest.fixture
async def json_server(aiohttp_server: Any) -> JsonServer:
    server = JsonServer()
    test_server = await aiohttp_server(server.app, host="127.0.0.1", port=0)
    server.base_url = str(test_server.make_url("")).rstrip("/")
    assert server.base_url.startswith("http://127.0.0.1:")
    return server


@pytest.fixture
async def sup(seed_plugins: Path, tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(seed_plugins, log_dir=tmp_path / "logs") as supervisor:
        yield supervisor


# -- Async programming --------------------------------------------------------------
async def test_async_task_fetches_json_from_a_local_server(sup: Supervisor, json_server: JsonServer) -> None:
    value = await sup.call("async_fetch", "async_task", {"url": f"{json_server.base_url}/data"}, timeout=10)
    assert value == {"data": PAYLOAD}


async def test_async_task_runs_concurrently_on_the_worker_loop(sup: Supervisor, json_server: JsonServer) -> None:
    url = f"{json_server.base_url}/data"
    values = await asyncio.gather(*(sup.call("async_fetch", "async_task", {"url": url}, timeout=10) for _ in range(20)))
    assert values == [{"data": PAYLOAD}] * 20


# -- Thread safety ------------------------------------------------------------------
async def test_thread_safe_update_from_many_concurrent_calls(sup: Supervisor) -> None:
    count = 200
    results = await asyncio.gather(
        *(sup.call("thread_safe", "update", {"key": f"k{i}", "value": f"v{i}"}, timeout=10) for i in range(count))
    )
    assert results == [{"updated": True}] * count

    snapshot = await sup.call("thread_safe", "snapshot", timeout=5)
    assert snapshot == {f"k{i}": f"v{i}" for i in range(count)}
    gets = await asyncio.gather(*(sup.call("thread_safe", "get", {"key": f"k{i}"}, timeout=5) for i in range(0, count, 17)))
    assert gets == [{"value": f"v{i}"} for i in range(0, count, 17)]
    assert await sup.call("thread_safe", "get", {"key": "never-set"}, timeout=5) == {"value": None}


async def test_thread_safe_concurrent_updates_of_one_key_leave_one_of_the_values(sup: Supervisor) -> None:
    values = {f"v{i}" for i in range(50)}
    await asyncio.gather(*(sup.call("thread_safe", "update", {"key": "same", "value": v}, timeout=10) for v in values))
    snapshot = await sup.call("thread_safe", "snapshot", timeout=5)
    assert list(snapshot) == ["same"]
    assert snapshot["same"] in values
    assert await sup.call("thread_safe", "get", {"key": "same"}, timeout=5) == {"value": snapshot["same"]}


# -- Error handling with retry ------------------------------------------------------
async def test_flaky_succeeds_on_the_third_attempt(sup: Supervisor) -> None:
    assert await sup.call("reliable_fetch", "flaky", {"fail_times": 2}, timeout=10) == {"attempts": 3}
    # The count lives on the instance: attempt 4 is past fail_times, so it succeeds at once.
    assert await sup.call("reliable_fetch", "flaky", {"fail_times": 2}, timeout=10) == {"attempts": 4}


async def test_flaky_gives_up_after_three_attempts_with_the_plugins_own_error(sup: Supervisor) -> None:
    with pytest.raises(EntryFailed) as caught:
        await sup.call("reliable_fetch", "flaky", {"fail_times": 5}, timeout=10)
    # reraise=True: the caller sees the last RuntimeError itself, not tenacity's RetryError.
    assert caught.value.type_name == "RuntimeError"
    assert caught.value.message == "flaky: attempt 3 fails on purpose (fail_times=5)"
    assert "RuntimeError: flaky: attempt 3" in caught.value.traceback
    assert sup.status("reliable_fetch").state == "running"


async def test_flaky_count_starts_from_zero_in_a_new_worker(sup: Supervisor) -> None:
    assert await sup.call("reliable_fetch", "flaky", {"fail_times": 0}, timeout=10) == {"attempts": 1}
    assert await sup.call("reliable_fetch", "flaky", {"fail_times": 0}, timeout=10) == {"attempts": 2}
    await sup.restart("reliable_fetch")
    assert await sup.call("reliable_fetch", "flaky", {"fail_times": 0}, timeout=10) == {"attempts": 1}


async def test_reliable_fetch_aiohttp_returns_the_json(sup: Supervisor, json_server: JsonServer) -> None:
    value = await sup.call("reliable_fetch", "reliable_fetch_aiohttp", {"url": f"{json_server.base_url}/data"}, timeout=10)
    assert value == {"data": PAYLOAD}


async def test_reliable_fetch_aiohttp_retries_server_errors(sup: Supervisor, json_server: JsonServer) -> None:
    value = await sup.call("reliable_fetch", "reliable_fetch_aiohttp", {"url": f"{json_server.base_url}/flaky"}, timeout=10)
    assert value == {"data": PAYLOAD}
    assert json_server.flaky_hits == 3


async def test_reliable_fetch_with_requests_as_in_the_seed(sup: Supervisor, json_server: JsonServer) -> None:
    """The seed's verbatim entry imports `requests`, which is no dependency of ours.

    Without it each of the 3 attempts raises ModuleNotFoundError, with waits of
    4 s between them (wait_exponential(min=4)); the seed's @retry has no
    reraise=True, so tenacity ends with RetryError chained from the last
    ModuleNotFoundError, and that is what the caller sees.
    """
    url = f"{json_server.base_url}/data"
    if importlib.util.find_spec("requests") is not None:
        assert await sup.call("reliable_fetch", "reliable_fetch", {"url": url}, timeout=30) == {"data": PAYLOAD}
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(EntryFailed) as caught:
        await sup.call("reliable_fetch", "reliable_fetch", {"url": url}, timeout=30)
    elapsed = loop.time() - started
    assert caught.value.type_name == "RetryError"
    assert "raised ModuleNotFoundError" in caught.value.message
    assert "ModuleNotFoundError: No module named 'requests'" in caught.value.traceback
    assert 7.5 < elapsed < 15  # two waits of 4 s: the retry really ran in the worker
    assert sup.status("reliable_fetch").state == "running"


# -- Custom configuration -----------------------------------------------------------
async def test_configurable_defaults_persist_and_reload_after_restart(sup: Supervisor, seed_plugins: Path) -> None:
    config_file = seed_plugins / "configurable" / "config.json"
    assert not config_file.exists()
    assert await sup.call("configurable", "get_config", timeout=5) == {"timeout": 30}

    assert await sup.call("configurable", "set_config", {"key": "timeout", "value": 5}, timeout=5) == {"timeout": 5}
    changed = await sup.call("configurable", "set_config", {"key": "mode", "value": "fast"}, timeout=5)
    assert changed == {"timeout": 5, "mode": "fast"}
    assert json.loads(config_file.read_text()) == {"timeout": 5, "mode": "fast"}

    old_pid = sup.status("configurable").pid
    await sup.restart("configurable")
    status = sup.status("configurable")
    assert status.state == "running"
    assert status.pid != old_pid
    assert await sup.call("configurable", "get_config", timeout=5) == {"timeout": 5, "mode": "fast"}


async def test_configurable_reads_a_config_file_written_before_start(seed_plugins: Path, tmp_path: Path) -> None:
    (seed_plugins / "configurable" / "config.json").write_text(json.dumps({"timeout": 7, "retries": [1, 2]}))
    async with Supervisor(seed_plugins, log_dir=tmp_path / "logs") as sup:
        assert await sup.call("configurable", "get_config", timeout=5) == {"timeout": 7, "retries": [1, 2]}


# -- Data persistence with SQLite ---------------------------------------------------
async def test_persistent_save_load_keys_and_survive_restart(sup: Supervisor, seed_plugins: Path) -> None:
    db_path = seed_plugins / "persistent" / "data.db"
    assert db_path.exists()  # created by __init__ (_init_db), beside plugin.toml
    assert (db_path.parent / "plugin.toml").exists()

    assert await sup.call("persistent", "save", {"key": "b", "value": "second"}, timeout=5) == {"saved": True}
    assert await sup.call("persistent", "save", {"key": "a", "value": "first"}, timeout=5) == {"saved": True}
    assert await sup.call("persistent", "load", {"key": "a"}, timeout=5) == {"key": "a", "value": "first"}
    assert await sup.call("persistent", "load", {"key": "missing"}, timeout=5) == {"key": "missing", "value": None}
    assert await sup.call("persistent", "keys", timeout=5) == {"keys": ["a", "b"]}
    # INSERT OR REPLACE: saving a key again replaces its value.
    assert await sup.call("persistent", "save", {"key": "a", "value": "again"}, timeout=5) == {"saved": True}
    assert await sup.call("persistent", "load", {"key": "a"}, timeout=5) == {"key": "a", "value": "again"}

    old_pid = sup.status("persistent").pid
    await sup.restart("persistent")
    assert sup.status("persistent").pid != old_pid
    assert await sup.call("persistent", "load", {"key": "a"}, timeout=5) == {"key": "a", "value": "again"}
    assert await sup.call("persistent", "keys", timeout=5) == {"keys": ["a", "b"]}

    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT key, value, created_at FROM records ORDER BY key").fetchall()
        assert [(key, value) for key, value, _ in rows] == [("a", "again"), ("b", "second")]
        assert all(created_at for _, _, created_at in rows)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


async def test_persistent_concurrent_saves_all_land(sup: Supervisor, seed_plugins: Path) -> None:
    count = 50
    results = await asyncio.gather(
        *(sup.call("persistent", "save", {"key": f"k{i:02d}", "value": str(i)}, timeout=20) for i in range(count))
    )
    assert results == [{"saved": True}] * count
    assert await sup.call("persistent", "keys", timeout=5) == {"keys": [f"k{i:02d}" for i in range(count)]}


# -- One process per plugin ---------------------------------------------------------
async def test_every_seed_plugin_runs_in_its_own_worker(sup: Supervisor, seed_plugins: Path) -> None:
    statuses = {status.id: status for status in sup.statuses()}
    assert set(statuses) == set(SEED_ENTRIES)
    pids = []
    for plugin_id, entry_ids in SEED_ENTRIES.items():
        status = sup.status(plugin_id)
        assert statuses[plugin_id].pid == status.pid
        assert status.state == "running"
        assert status.error is None
        assert status.restarts == 0
        assert {entry.id for entry in status.entries} == entry_ids
        assert status.pid is not None and pid_alive(status.pid)
        proc = psutil.Process(status.pid)
        assert same_path(proc.cwd(), seed_plugins / plugin_id)
        assert proc.ppid() == psutil.Process().pid
        cmdline = proc.cmdline()
        assert cmdline[cmdline.index("-m") + 1] == "worker"
        assert same_path(cmdline[cmdline.index("worker") + 1], seed_plugins / plugin_id)
        pids.append(status.pid)
    assert len(set(pids)) == len(SEED_ENTRIES)


async def test_seed_entries_are_described(sup: Supervisor) -> None:
    def entries(plugin_id: str) -> dict[str, Any]:
        return {entry.id: entry for entry in sup.status(plugin_id).entries}

    assert entries("async_fetch")["async_task"].is_async is True
    # tenacity's async wrapper is still seen as async (through __wrapped__).
    assert entries("reliable_fetch")["reliable_fetch_aiohttp"].is_async is True
    assert entries("reliable_fetch")["flaky"].is_async is False
    assert entries("thread_safe")["update"].is_async is False
    assert entries("thread_safe")["get"].description == "Read one key; None when it was never set."
    assert entries("persistent")["keys"].description == "All keys, sorted."
    assert entries("configurable")["set_config"].name == "set_config"
