"""`neko-supervisor serve` as an operator runs it: a real subprocess, real workers, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from supervisor.service.serve import HTTP_SHUTDOWN_GRACE
from tests.conftest import FAULT_PLUGINS, ROOT, copy_plugins, pid_alive
from tests.integration.helpers import text_of, wait_for

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]

TOKEN = "operator-token-0123456789abcdef"


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    stdout_lines: list[str]
    stderr_path: Path
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.request(
            method, self.url + path, json=body, headers=self.auth, timeout=aiohttp.ClientTimeout(total=20)
        ) as response:
            return response.status, await response.json()

    async def signal_and_wait(self, *signals: int, timeout: float = 20) -> int:
        for sig in signals:
            self.process.send_signal(sig)
        async with asyncio.timeout(timeout):
            return await self.process.wait()


async def launch(plugins: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    with open(tmp_path / "serve.stderr", "wb") as stderr:  # noqa: ASYNC230 - a test's local file
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "supervisor", "serve", str(plugins), "--port", "0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT, env={**os.environ, **(env or {})},
        )


async def start_serving(plugins: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    stderr_path = tmp_path / "serve.stderr"
    process = await launch(plugins, tmp_path, *args, env=env)
    lines: list[str] = []
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while not lines or lines[-1] != "neko-supervisor: ready":
            line = (await process.stdout.readline()).decode()
            assert line, f"serve exited before it was ready: {lines} {text_of(stderr_path)}"
            lines.append(line.rstrip("\n"))
    match = re.search(r"on (http://\S+) \(API token (?:in (\S+)|from (\S+))\)", lines[0])
    assert match, lines
    token = (env or {}).get("NEKO_SUPERVISOR_TOKEN") or Path(match.group(2)).read_text().strip()  # noqa: ASYNC240
    return Served(process, match.group(1), lines, stderr_path, token)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo", "crash"])


@pytest.fixture
async def cleanup() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a failed test left running get killed (their workers follow them)."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


def worker_pids(plugins_json: dict[str, Any]) -> list[int]:
    return [row["pid"] for row in plugins_json["plugins"] if row["pid"] is not None]


async def test_serve_calls_an_entry_and_stops_cleanly_on_sigterm(plugins: Path, tmp_path: Path, cleanup: list[Any]) -> None:
    served = await start_serving(plugins, tmp_path, env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(served.process)
    assert served.url.startswith("http://127.0.0.1:")
    assert "API token from NEKO_SUPERVISOR_TOKEN" in served.stdout_lines[0]
    for plugin in ("echo", "crash"):
        assert any(line.startswith(f"neko-supervisor: plugin {plugin}: running (pid ") for line in served.stdout_lines)
    assert await served.request("POST", "/v1/plugins/echo/entries/echo", {"value": [1, "two"]}) == (200, {"ok": True, "value": [1, "two"]})
    # The token never reaches a worker.
    status, whoami = await served.request("POST", "/v1/plugins/echo/entries/whoami")
    assert status == 200 and "NEKO_SUPERVISOR_TOKEN" not in whoami["value"]["env"]
    assert TOKEN not in json.dumps(whoami["value"])
    # A crash in one plugin is answered, and the service goes on.
    status, body = await served.request("POST", "/v1/plugins/crash/entries/crash", {"code": 3})
    assert (status, body["error"]["type"]) == (502, "WorkerCrashed")
    status, listing = await served.request("GET", "/v1/plugins")
    pids = worker_pids(listing)
    assert len(pids) >= 1 and all(pid_alive(pid) for pid in pids)

    assert await served.signal_and_wait(signal.SIGTERM) == 0
    assert not [pid for pid in pids if pid_alive(pid)]
    log = text_of(served.stderr_path)
    assert "SIGTERM: stopping every plugin" in log and "all plugins stopped" in log
    assert "[echo] supervisor: worker" in log  # each plugin's lines carry its id
    assert "Traceback" not in log


async def test_a_generated_token_lives_in_a_private_file_removed_at_exit(plugins: Path, tmp_path: Path, cleanup: list[Any]) -> None:
    env = {key: value for key, value in os.environ.items() if key != "NEKO_SUPERVISOR_TOKEN"}
    served = await start_serving(plugins, tmp_path, env=env)
    cleanup.append(served.process)
    token_file = Path(re.search(r"API token in (\S+)\)", served.stdout_lines[0]).group(1))  # type: ignore[union-attr]
    modes = stat.S_IMODE(os.stat(token_file).st_mode), stat.S_IMODE(os.stat(token_file.parent).st_mode)
    assert modes == (0o600, 0o700)
    assert len(served.token) >= 32
    assert (await served.request("GET", "/v1/plugins"))[0] == 200
    served.token = "not-the-token-not-the-token"
    assert (await served.request("GET", "/v1/plugins"))[0] == 401
    assert await served.signal_and_wait(signal.SIGINT) == 0
    assert not os.path.exists(token_file)  # noqa: ASYNC240 - a test checking a local file


async def test_a_second_signal_kills_the_workers_at_once(tmp_path: Path, cleanup: list[Any]) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["sigterm_ignorer", "echo"])
    toml = plugins / "sigterm_ignorer" / "plugin.toml"
    toml.write_text(toml.read_text().replace("shutdown_timeout = 0.5", "shutdown_timeout = 60"))
    served = await start_serving(plugins, tmp_path, env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(served.process)
    _, listing = await served.request("GET", "/v1/plugins")
    pids = worker_pids(listing)
    served.process.send_signal(signal.SIGTERM)
    # The graceful stop now waits up to 60 s for the stubborn plugin; the second signal ends that.
    await wait_for(lambda: "stopping every plugin" in text_of(served.stderr_path))
    await wait_for(lambda: not pid_alive(next(row["pid"] for row in listing["plugins"] if row["id"] == "echo")))
    assert await served.signal_and_wait(signal.SIGINT, timeout=10) == 1
    assert not [pid for pid in pids if pid_alive(pid)]
    assert "second SIGINT: killing every worker now" in text_of(served.stderr_path)


async def test_json_log_lines_carry_the_plugin_id(plugins: Path, tmp_path: Path, cleanup: list[Any]) -> None:
    served = await start_serving(plugins, tmp_path, "--log-format", "json", env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(served.process)
    await served.request("POST", "/v1/plugins/crash/entries/crash", {"code": 5})
    assert await served.signal_and_wait(signal.SIGHUP) == 0  # the terminal closed: a clean stop too
    records = [json.loads(line) for line in text_of(served.stderr_path).splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= set(record) for record in records)
    crash_lines = [record for record in records if record.get("plugin") == "crash"]
    assert any("exited with code 5" in record["message"] for record in crash_lines)
    assert any(record["logger"] == "aiohttp.access" and "/v1/plugins/crash/entries/crash" in record["message"] for record in records)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--token-file", "{tmp}/missing"], {}, "--token-file {tmp}/missing: cannot read it"),
        ([], {"NEKO_SUPERVISOR_TOKEN": "short"}, "NEKO_SUPERVISOR_TOKEN: the token must be at least 16 characters"),
        (["--port", "99999"], {}, "--port: must be a port number"),
        (["--log-format", "xml"], {}, "--log-format: invalid choice"),
        (["--ray-channel-ports", "9000-8000"], {}, "--ray-channel-ports: must be FIRST-LAST"),
        (["--ray-channel-ports", "9000-9010"], {"NEKO_SUPERVISOR_TOKEN": TOKEN}, "--ray-channel-ports is for --ray"),
    ],
)
async def test_bad_options_fail_in_one_line_before_any_plugin_starts(
    plugins: Path, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor", "serve", str(plugins), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "NEKO_SUPERVISOR_TOKEN"}, **env},
    )
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate()
    assert process.returncode == 2
    assert message.replace("{tmp}", str(tmp_path)) in stderr.decode()
    assert "Traceback" not in stderr.decode() and stdout == b""


async def test_a_port_in_use_is_a_clear_error(plugins: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "supervisor", "serve", str(plugins), "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "NEKO_SUPERVISOR_TOKEN": TOKEN},
        )
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode()
    assert not [p for p in psutil.Process().children(recursive=True) if "worker" in " ".join(p.cmdline())]


async def test_a_client_that_hangs_up_cancels_its_call(plugins: Path, tmp_path: Path, cleanup: list[Any]) -> None:
    """Callers that give up and retry must not fill a plugin's places with calls nobody awaits."""
    served = await start_serving(plugins, tmp_path, env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(served.process)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await session.post(
                served.url + "/v1/plugins/echo/entries/asleep", json={"seconds": 60}, headers=served.auth,
                timeout=aiohttp.ClientTimeout(total=0.5),
            )
    async with asyncio.timeout(10):  # the worker was asked to cancel it
        # A poll of another process's state (no event crosses to us), bounded by the deadline.
        while (row := (await served.request("GET", "/v1/plugins/echo"))[1]["plugin"])["in_flight"] or row["failures"] != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await served.signal_and_wait(signal.SIGTERM) == 0


async def test_a_malformed_request_is_one_warning_without_the_token(plugins: Path, tmp_path: Path, cleanup: list[Any]) -> None:
    served = await start_serving(plugins, tmp_path, env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(served.process)
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/plugins HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\x00\r\n\r\n".encode())
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
    assert await served.signal_and_wait(signal.SIGTERM) == 0
    log = text_of(served.stderr_path)
    assert "WARNING aiohttp.server: malformed HTTP request from 127.0.0.1: BadHttpMessage (answered 400)" in log
    assert TOKEN not in log and "Traceback" not in log


async def test_a_signal_during_start_up_stops_cleanly(tmp_path: Path, cleanup: list[Any]) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["slow_start", "echo"])
    (plugins / "slow_start" / "delay.txt").write_text("3")
    process = await launch(plugins, tmp_path, env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(process)
    assert process.stdout is not None
    async with asyncio.timeout(20):
        first = (await process.stdout.readline()).decode()  # listening: start-up has begun
        assert "serving" in first
        process.send_signal(signal.SIGINT)
        rest = (await process.stdout.read()).decode()
        assert await process.wait() == 0
    assert "ready" not in rest
    log = text_of(tmp_path / "serve.stderr")
    assert "SIGINT: stopping every plugin" in log and "Traceback" not in log


async def test_an_open_event_stream_sees_the_stop_and_does_not_hold_the_exit(plugins: Path, tmp_path: Path, cleanup: list[Any]) -> None:
    """A dashboard left open must not keep the service alive: the stream says
    `stopping`, then ends when the plugins are stopped, not at the end of
    aiohttp's grace for unfinished answers."""
    served = await start_serving(plugins, tmp_path, env={"NEKO_SUPERVISOR_TOKEN": TOKEN})
    cleanup.append(served.process)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session, session.get(
        served.url + "/v1/events", headers=served.auth, timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")
        assert b'"stopping":false' in first
        served.process.send_signal(signal.SIGTERM)
        signalled = loop.time()
        rest = await response.content.read()  # to the stream's end
        ended = loop.time() - signalled
    assert b'"stopping":true' in rest
    assert ended < HTTP_SHUTDOWN_GRACE, f"the stream ended {ended:.1f} s after SIGTERM: it waited for the grace"
    async with asyncio.timeout(20):
        assert await served.process.wait() == 0
