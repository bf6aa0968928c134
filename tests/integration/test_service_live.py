"""What the dashboard reads, against the real app and real workers: the page's files, the
event stream, logs followed by position, the call history, schemas from signatures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application

from supervisor import Supervisor
from supervisor.service import HostPolicy, ServiceConfig, ServiceState, Token, create_app
from supervisor.service.app import FEED
from tests.conftest import FAULT_PLUGINS, copy_plugins
from tests.integration.helpers import wait_for

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]

TOKEN = "live-token-" + "y" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}

AiohttpClient = Callable[[Application], Awaitable[TestClient]]


@pytest.fixture
async def service(tmp_path: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[tuple[TestClient, Supervisor, Application]]:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo", "crash"])
    sup = Supervisor(plugins, log_dir=False)
    await sup.start()
    app = create_app(sup, ServiceConfig(Token(TOKEN.encode(), "test"), HostPolicy.for_bind("127.0.0.1")), ServiceState(ready=True))
    client = await aiohttp_client(app)
    yield client, sup, app
    await sup.stop()


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The `plugins` events of a stream, decoded (keepalive comments skipped)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            lines = block.decode().split("\n")
            if lines[0] == "event: plugins":
                yield json.loads(lines[1].removeprefix("data: "))


async def test_the_page_and_its_files_need_no_token_and_forbid_foreign_code(service: Any) -> None:
    client, _, _ = service
    files = [("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/chart.js", "text/javascript"),
             ("/static/forms.js", "text/javascript"), ("/static/app.css", "text/css")]
    for path, kind in files:
        async with client.get(path) as response:
            assert response.status == 200, path
            assert response.content_type == kind
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            body = await response.text()
    assert "<script" not in body  # the style sheet, last: nothing inline anywhere
    async with client.get("/") as response:
        page = await response.text()
    assert '<script type="module" src="/static/app.js"></script>' in page and "http" not in page.split("<body>")[0].replace("http-equiv", "")
    # Only the listed files: no path reaches the disk, and before the token nothing is told.
    for path in ["/static/../app.py", "/static/app.py", "/static/", "/index.html", "/static%2Fapp.js"]:
        async with client.get(path) as response:
            assert response.status == 401, path
        async with client.get(path, headers=AUTH) as response:
            assert response.status == 404, path


async def test_the_event_stream_shows_a_crash_and_the_restart(service: Any) -> None:
    client, sup, _ = service
    async with client.get("/v1/events") as response:
        assert response.status == 401
    async with client.get("/v1/events", headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        stream = events(response)
        first = await anext(stream)
        assert first["service"] == {"ready": True, "stopping": False}
        rows = {row["id"]: row for row in first["plugins"]}
        assert rows["crash"]["state"] == "running" and rows["crash"]["restarts"] == 0
        old_pid = rows["crash"]["pid"]
        async with client.post("/v1/plugins/crash/entries/crash", json={"code": 3}, headers=AUTH) as crashed:
            assert crashed.status == 502
        async with asyncio.timeout(10):
            async for snapshot in stream:
                crash = next(row for row in snapshot["plugins"] if row["id"] == "crash")
                if crash["restarts"] == 1 and crash["state"] == "running" and crash["pid"] not in (None, old_pid):
                    break
        assert crash["last_exit"]["exit_code"] == 3 and crash["failures"] == 1
        assert crash["pid"] == sup.status("crash").pid


async def test_an_open_stream_ends_when_the_service_shuts_down(service: Any) -> None:
    client, _, app = service
    async with client.get("/v1/events", headers=AUTH) as response:
        stream = events(response)
        await anext(stream)
        app[FEED].close()  # what on_shutdown does: no stream may hold the shutdown
        async with asyncio.timeout(10):
            rest = [snapshot async for snapshot in stream]
    assert len(rest) <= 1


async def test_a_log_is_followed_by_position_without_rereading_it(service: Any) -> None:
    client, sup, _ = service

    async def logs(query: str) -> dict[str, Any]:
        async with client.get(f"/v1/plugins/echo/logs?{query}", headers=AUTH) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    first = await logs("tail=100")
    assert first["next"] == sup.status("echo").log_lines == len(first["lines"]) > 0
    assert first["skipped"] == 0
    async with client.post("/v1/plugins/echo/restart", headers=AUTH) as response:
        assert response.status == 200
    new = await logs(f"after={first['next']}&tail=100")
    assert new["lines"] and not set(new["lines"]) & set(first["lines"][-1:])
    assert any("started" in line for line in new["lines"])
    assert new["next"] == first["next"] + len(new["lines"])
    cut = await logs(f"after={first['next']}&tail=1")
    # Counted, not compared line by line: a late line of the new worker may land in between.
    assert len(cut["lines"]) == 1 and cut["skipped"] == cut["next"] - first["next"] - 1
    assert (await logs(f"after={new['next']}"))["lines"] == []
    async with client.get("/v1/plugins/echo/logs?after=-1", headers=AUTH) as response:
        assert response.status == 400


async def test_the_history_counts_calls_failures_and_restarts(service: Any) -> None:
    client, sup, app = service
    for _ in range(3):
        async with client.post("/v1/plugins/crash/entries/ping", headers=AUTH) as response:
            assert response.status == 200
    async with client.post("/v1/plugins/crash/entries/crash", json={"code": 3}, headers=AUTH) as response:
        assert response.status == 502
    async with client.post("/v1/plugins/crash/entries/no_such_entry", headers=AUTH) as response:
        assert response.status == 404  # an undeclared entry is not charted (as in the metrics)
    await wait_for(lambda: sup.status("crash").restarts == 1)
    app[FEED].sample()  # the sampler's next look, now rather than within a quarter second
    async with client.get("/v1/plugins/crash/history", headers=AUTH) as response:
        assert response.status == 200
        history = await response.json()
    buckets = history["buckets"]
    assert history["bucket_seconds"] == 5.0 and history["window_buckets"] == 120
    assert sum(bucket["calls"] for bucket in buckets) == 4
    assert sum(bucket["failures"] for bucket in buckets) == 1
    assert sum(bucket["restarts"] for bucket in buckets) == 1
    busy = [bucket for bucket in buckets if bucket["calls"]]
    assert all(0 < bucket["mean_ms"] <= bucket["max_ms"] for bucket in busy)
    async with client.get("/v1/plugins/nobody/history", headers=AUTH) as response:
        assert response.status == 404


async def test_entries_without_a_declared_schema_get_one_from_their_signature(service: Any) -> None:
    client, _, _ = service
    async with client.get("/v1/plugins/crash", headers=AUTH) as response:
        entries = {entry["id"]: entry for entry in (await response.json())["plugin"]["entries"]}
    schema = entries["crash"]["input_schema"]
    assert schema["properties"] == {"code": {"type": "integer", "default": 3}}
    assert schema["$comment"] == "derived from the entry's signature" and "required" not in schema
