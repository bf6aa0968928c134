"""The HTTP API against the real aiohttp app and real workers: every route, every error code, auth everywhere."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application

from supervisor import PluginUnavailable, Supervisor
from supervisor.service import HostPolicy, ServiceConfig, ServiceState, Token, create_app
from supervisor.service.app import PUBLIC_PATHS
from tests.conftest import FAULT_PLUGINS, copy_plugins
from tests.integration.helpers import make_plugin, wait_for

pytestmark = pytest.mark.usefixtures("no_leaks")

TOKEN = "s3cret-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024
MAX_TIMEOUT = 1.0

RAISER = """
    from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry

    @neko_plugin
    class Raiser(NekoPluginBase):
        @plugin_entry(id="boom", description="Raise ValueError.")
        def boom(self, **_):
            raise ValueError("bad value " + str(self.ctx.config_path))

        @plugin_entry(id="raw")
        def raw(self, **_):
            return {"data": b"\\x00\\xffneko"}

        @plugin_entry(id="nan")
        def nan(self, **_):
            return float("nan")

        @plugin_entry(id="wait")
        async def wait(self, seconds: float, **_):
            import asyncio
            await asyncio.sleep(seconds)
            return seconds
"""

AiohttpClient = Callable[[Application], Awaitable[TestClient]]


@dataclass
class Service:
    client: TestClient
    sup: Supervisor
    state: ServiceState
    app: Application
    folder: Path

    async def get(self, path: str, headers: dict[str, str] | None = AUTH, **kw: Any) -> tuple[int, Any]:
        async with self.client.get(path, headers=headers, **kw) as response:
            return response.status, await response.json()

    async def post(self, path: str, body: Any = None, headers: dict[str, str] | None = AUTH, **kw: Any) -> tuple[int, Any]:
        async with self.client.post(path, json=body, headers=headers, **kw) as response:
            return response.status, await response.json()

    async def call(self, plugin: str, entry: str, args: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.post(f"/v1/plugins/{plugin}/entries/{entry}", args, **kw)


@pytest.fixture
async def make_service(tmp_path: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """`await make_service("echo", ...)`: those fault plugins plus `raiser` (raises), `narrow`
    (one call at a time, no queue), `off` (disabled), `unimportable` (not started: its
    import raises) and `broken` (bad plugin.toml)."""
    supervisors: list[Supervisor] = []

    async def make(*fault_plugins: str, start: bool = True, **server_kwargs: Any) -> Service:
        plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", list(fault_plugins))
        make_plugin(plugins, "raiser", {"__init__.py": RAISER}, entry="raiser:Raiser")
        make_plugin(plugins, "narrow", {"__init__.py": RAISER}, entry="narrow:Raiser", max_concurrency=1, max_queue=0, shutdown_timeout=0.5)
        make_plugin(plugins, "off", {"__init__.py": RAISER}, entry="off:Raiser", enabled=False)
        make_plugin(plugins, "unimportable", {"__init__.py": "raise RuntimeError('cannot import me')\n"}, entry="unimportable:X", auto_start=False, max_restarts=1)
        (plugins / "broken").mkdir()
        (plugins / "broken" / "plugin.toml").write_text('[plugin]\nid = "broken"\nentry = 42\n')
        sup = Supervisor(plugins, log_dir=False)
        supervisors.append(sup)
        if start:
            await sup.start()
        state = ServiceState(ready=start)
        config = ServiceConfig(Token(TOKEN.encode(), "test"), HostPolicy.for_bind("127.0.0.1"), MAX_BODY, MAX_TIMEOUT)
        app = create_app(sup, config, state)
        return Service(await aiohttp_client(app, server_kwargs=server_kwargs), sup, state, app, plugins)

    yield make
    for sup in supervisors:
        await sup.stop()


# -- health and listing -----------------------------------------------------------------
async def test_livez_and_readyz_need_no_token_and_follow_the_service_state(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo", start=False)
    assert await service.get("/livez", headers=None) == (200, {"live": True})
    async with service.client.get("/livez") as response:
        assert "Server" not in response.headers  # no software versions before the token
    assert await service.get("/readyz", headers=None) == (503, {"ready": False, "reason": "starting"})
    status, body = await service.get("/v1/plugins")
    assert (status, body["error"]["type"]) == (503, "ServiceStarting")
    await service.sup.start()
    service.state.ready = True
    assert await service.get("/readyz", headers=None) == (200, {"ready": True})
    service.state.stopping = True
    assert await service.get("/readyz", headers=None) == (503, {"ready": False, "reason": "stopping"})


async def test_list_plugins_reports_every_plugin(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo")
    await wait_for(lambda: service.sup.status("echo").memory_rss is not None)  # the watcher's first look
    status, body = await service.get("/v1/plugins")
    assert status == 200
    rows = {row["id"]: row for row in body["plugins"]}
    assert set(rows) == {"echo", "raiser", "narrow", "off", "broken", "unimportable"}
    echo = rows["echo"]
    assert echo["state"] == "running" and echo["pid"] == service.sup.status("echo").pid
    assert echo["where"] == "local" and rows["off"]["where"] is None  # where its worker runs; none when stopped
    assert echo["restarts"] == 0 and echo["last_exit"] is None and echo["uptime"] >= 0
    assert echo["memory_rss"] > 1_000_000 and echo["processes"] == 1
    assert {"calls", "failures", "in_flight", "queued", "cpu_time", "processes", "error"} <= set(echo)
    assert rows["broken"]["state"] == "failed" and "plugin.entry" in rows["broken"]["error"]
    assert rows["off"]["state"] == "stopped"


async def test_one_plugin_shows_its_entries(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo")
    status, body = await service.get("/v1/plugins/echo")
    assert status == 200
    entries = {entry["id"]: entry for entry in body["plugin"]["entries"]}
    assert entries["echo"]["description"] == "Return `value` unchanged (sync)."
    assert entries["aecho"]["is_async"] is True
    assert {"id", "name", "description", "input_schema", "timeout"} <= set(entries["sleep"])
    assert body["plugin"]["protections"]["core_dumps"] == "off"


# -- calls -------------------------------------------------------------------------------
async def test_a_call_returns_exactly_ok_and_value(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo")
    assert await service.call("echo", "echo", {"value": {"a": [1, 2.5, None, "ü"]}}) == (200, {"ok": True, "value": {"a": [1, 2.5, None, "ü"]}})
    assert await service.call("echo", "aecho", {"value": "async"}) == (200, {"ok": True, "value": "async"})
    async with service.client.post("/v1/plugins/echo/entries/ping", headers=AUTH) as response:  # no body: no arguments
        assert (response.status, await response.json()) == (200, {"ok": True, "value": "pong"})
    # Bytes have no JSON form: base64 text.
    status, body = await service.call("echo", "repeat", {"value": "ab", "times": 2})
    assert (status, body) == (200, {"ok": True, "value": "abab"})
    async with service.client.post("/v1/plugins/echo/entries/echo", data=b'{"value": "x"}', headers={**AUTH, "Content-Type": "text/plain"}) as response:
        assert (response.status, await response.json()) == (200, {"ok": True, "value": "x"})


async def test_bytes_in_a_value_come_back_as_base64(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service()
    status, body = await service.call("raiser", "raw")
    assert status == 200
    assert base64.b64decode(body["value"]["data"]) == b"\x00\xffneko"


# (plugin, entry, body, query) -> (status, error type, part of the message)
ERROR_CASES: list[tuple[str, str, str, str, int, str, str]] = [
        ("echo", "echo", "{bad", "", 400, "InvalidJSON", "not valid JSON"),
        ("echo", "echo", "[1, 2]", "", 400, "InvalidArguments", "must be a JSON object"),
        ("echo", "echo", "{}", "", 400, "InvalidArguments", "missing a required argument: 'value'"),
        ("echo", "echo", '{"value": 1}', "?timeout=abc", 400, "InvalidArguments", "timeout must be a number"),
        ("echo", "echo", '{"value": 1}', "?timeout=-1", 400, "InvalidArguments", "timeout must be a number"),
        ("echo", "echo", '{"value": 1}', "?timeout=nan", 400, "InvalidArguments", "timeout must be a number"),
        ("echo", "echo", '{"value": 1}', "?timeout=inf", 400, "InvalidArguments", "timeout must be a number"),
        ("echo", "echo", '{"value": NaN}', "", 400, "InvalidJSON", "NaN is not JSON"),
        ("echo", "echo", '{"value": 1e400}', "", 400, "InvalidJSON", "too large a number"),
        ("echo", "echo", '{"value": 1}', "?timeout=1_0", 400, "InvalidArguments", "timeout must be a number"),
        ("echo", "echo", '{"value": 1}', "?timeout=%D9%A3", 400, "InvalidArguments", "timeout must be a number"),
        ("bad.id", "echo", "{}", "", 400, "InvalidId", "not a plugin id"),
        ("echo", "%01ctl", "{}", "", 400, "InvalidId", "not an entry id"),
        ("nope", "echo", "{}", "", 404, "PluginNotFound", "no plugin 'nope'"),
        ("echo", "nope", "{}", "", 404, "EntryNotFound", "has no entry 'nope'"),
        ("raiser", "boom", "{}", "", 422, "EntryFailed", "ValueError: bad value"),
        ("raiser", "nan", "{}", "", 422, "ResultNotSerializable", "cannot be written as JSON"),
        ("unserializable", "bad", "{}", "", 422, "ResultNotSerializable", "cannot be encoded"),
        ("crash", "crash", '{"code": 3}', "", 502, "WorkerCrashed", "exited with code 3"),
        ("protocol_breaker", "garbage", "{}", "", 502, "ProtocolError", "broke the protocol: invalid msgpack"),
        ("off", "boom", "{}", "", 503, "PluginUnavailable", "disabled"),
        ("broken", "boom", "{}", "", 503, "PluginUnavailable", "failed"),
        ("async_hang", "hang", "{}", "?timeout=0.2", 504, "CallTimeout", "timed out after 0.2 s"),
        # A caller's timeout is clamped to the service's maximum (1 s here).
        ("async_hang", "hang", "{}", "?timeout=3600", 504, "CallTimeout", "timed out after 1 s"),
]


async def test_each_error_has_its_status_code_and_json_shape(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo", "crash", "async_hang", "unserializable", "protocol_breaker")

    async def check(plugin: str, entry: str, body: str, query: str, status: int, error_type: str, message: str) -> None:
        async with service.client.post(f"/v1/plugins/{plugin}/entries/{entry}{query}", data=body, headers=AUTH) as response:
            got = await response.json()
            case = (plugin, entry, body, query, got)
            assert response.status == status, case
            assert response.content_type == "application/json", case
        assert got["ok"] is False and set(got["error"]) >= {"type", "message"}, case
        assert got["error"]["type"] == error_type, case
        assert message in got["error"]["message"], case

    # All at once: the cases are independent, and the two timeouts then cost one second, not both.
    await asyncio.gather(*(check(*case) for case in ERROR_CASES))


async def test_an_entry_error_carries_the_remote_type_and_traceback(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service()
    status, body = await service.call("raiser", "boom")
    assert status == 422
    assert body["error"]["remote_type"] == "ValueError"
    assert body["error"]["remote_message"].startswith("bad value")
    assert "Traceback" in body["error"]["traceback"] and "raise ValueError" in body["error"]["traceback"]


async def test_a_full_queue_is_429_with_retry_after(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service()
    busy = asyncio.create_task(service.call("narrow", "wait", {"seconds": 60}))
    await wait_for(lambda: service.sup.status("narrow").in_flight == 1)
    async with service.client.post("/v1/plugins/narrow/entries/wait", json={"seconds": 0}, headers=AUTH) as response:
        body = await response.json()
        assert (response.status, body["error"]["type"]) == (429, "PluginOverloaded")
        assert response.headers["Retry-After"] == "1"
    assert (await service.post("/v1/plugins/narrow/restart"))[0] == 200
    status, body = await busy  # cancelled by the restart's graceful stop
    assert (status, body["error"]["type"]) == (503, "PluginUnavailable")
    assert "shutting down" in body["error"]["message"]


async def test_a_body_over_the_limit_is_413_and_nothing_is_called(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo")
    big = '{"value": "' + "x" * MAX_BODY + '"}'
    async with service.client.post("/v1/plugins/echo/entries/echo", data=big, headers=AUTH) as response:
        assert response.status == 413
        assert (await response.json())["error"]["type"] == "RequestTooLarge"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(3):
            yield b"x" * MAX_BODY

    async with service.client.post("/v1/plugins/echo/entries/echo", data=chunks(), headers=AUTH) as response:
        assert response.status == 413
    assert service.sup.status("echo").calls == 0
    exactly = '{"value": "' + "x" * (MAX_BODY - len('{"value": ""}')) + '"}'
    assert len(exactly) == MAX_BODY
    async with service.client.post("/v1/plugins/echo/entries/echo", data=exactly, headers=AUTH) as response:
        assert response.status == 200  # the limit itself is allowed


async def test_a_bug_in_the_service_is_a_json_500_without_details(
    make_service: Callable[..., Awaitable[Service]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = await make_service()

    def broken() -> list[Any]:
        raise RuntimeError(f"internal detail {service.folder}")

    monkeypatch.setattr(service.sup, "statuses", broken)  # our own code failing, not a worker
    status, body = await service.get("/v1/plugins")
    assert status == 500
    assert body == {"ok": False, "error": {"type": "InternalError", "message": "the service hit an unexpected error; see its log"}}
    assert "internal detail" in caplog.text and "Traceback" in caplog.text  # the operator sees it all


# -- lifecycle and logs --------------------------------------------------------------------
async def test_stop_start_and_restart(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo")
    first_pid = service.sup.status("echo").pid
    status, body = await service.post("/v1/plugins/echo/stop")
    assert status == 200 and body["ok"] is True
    assert body["plugin"]["state"] == "stopped" and body["plugin"]["pid"] is None
    status, body = await service.call("echo", "ping")
    assert (status, body["error"]["type"]) == (503, "PluginUnavailable")
    status, body = await service.post("/v1/plugins/echo/start")
    assert status == 200 and body["plugin"]["state"] == "running"
    second_pid = body["plugin"]["pid"]
    assert second_pid not in (None, first_pid)
    status, body = await service.post("/v1/plugins/echo/restart")
    assert status == 200 and body["plugin"]["pid"] not in (None, second_pid)
    assert await service.call("echo", "ping") == (200, {"ok": True, "value": "pong"})


async def test_starting_a_plugin_that_cannot_start_is_503(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service()
    for action in ("start", "restart"):
        status, body = await service.post(f"/v1/plugins/broken/{action}")
        assert (status, body["error"]["type"]) == (503, "PluginUnavailable"), action
        assert "plugin.entry" in body["error"]["message"]
    # A first start that fails is retried under the restart policy: the answer waits for the end.
    status, body = await service.post("/v1/plugins/unimportable/start")
    assert (status, body["error"]["type"]) == (503, "PluginUnavailable")
    assert "failed" in body["error"]["message"] and "cannot import me" in body["error"]["message"]
    assert service.sup.status("unimportable").restarts == 1
    status, body = await service.post("/v1/plugins/off/start")
    assert status == 503 and "disabled" in body["error"]["message"]
    status, body = await service.post("/v1/plugins/nope/stop")
    assert (status, body["error"]["type"]) == (404, "PluginNotFound")


async def test_logs_tail(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("crash")
    await service.call("crash", "crash", {"code": 7})
    await service.sup.wait_for_state("crash", "running")
    status, body = await service.get("/v1/plugins/crash/logs?tail=50")
    assert status == 200 and body["plugin"] == "crash"
    assert any("exited with code 7" in line for line in body["lines"])
    status, body = await service.get("/v1/plugins/crash/logs?tail=2")
    assert len(body["lines"]) == 2
    assert (await service.get("/v1/plugins/crash/logs?tail=0"))[1]["lines"] == []
    for bad in ("-1", "%C2%B2", "%D9%A3", "1.5", "x"):  # "²" and "٣" pass str.isdigit()
        status, body = await service.get(f"/v1/plugins/crash/logs?tail={bad}")
        assert (status, body["error"]["type"]) == (400, "InvalidArguments"), bad


# -- metrics ---------------------------------------------------------------------------------
def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return None


async def test_metrics_count_calls_by_outcome_and_report_each_plugin(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo", "crash", "async_hang")
    for value in range(3):
        await service.call("echo", "echo", {"value": value})
    await service.call("echo", "echo", {})  # invalid arguments
    await service.call("echo", "no_such_entry")
    await service.call("async_hang", "hang", params={"timeout": "0.1"})
    await service.call("crash", "crash", {"code": 3})
    await service.sup.wait_for_state("crash", "running")
    async with service.client.get("/metrics", headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert _sample(text, "neko_calls_total", plugin="echo", entry="echo", outcome="ok") == 3
    assert _sample(text, "neko_calls_total", plugin="echo", entry="echo", outcome="invalid_arguments") == 1
    assert _sample(text, "neko_calls_total", plugin="async_hang", entry="hang", outcome="timeout") == 1
    assert _sample(text, "neko_calls_total", plugin="crash", entry="crash", outcome="crashed") == 1
    assert "no_such_entry" not in text  # unknown names never become label values
    assert _sample(text, "neko_call_duration_seconds_count", plugin="echo", entry="echo") == 4
    assert _sample(text, "neko_plugin_restarts_total", plugin="crash") == 1
    assert _sample(text, "neko_plugin_state", plugin="echo", state="running") == 1
    assert _sample(text, "neko_plugin_state", plugin="broken", state="failed") == 1
    assert _sample(text, "neko_plugin_state", plugin="broken", state="running") == 0
    rss = _sample(text, "neko_worker_memory_rss_bytes", plugin="echo")
    assert rss is None or rss > 1_000_000  # present once the watcher has looked
    await service.post("/v1/plugins/echo/stop")
    await service.call("echo", "made_up_while_stopped")  # 503, and still no new series
    await service.call("off", "never_declared")
    async with service.client.get("/metrics", headers=AUTH) as response:
        text = await response.text()
    assert "made_up_while_stopped" not in text and "never_declared" not in text


async def test_a_call_whose_client_hung_up_is_counted_as_cancelled(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo", handler_cancellation=True)  # as an embedder may run it
    with pytest.raises(TimeoutError):
        await service.client.post("/v1/plugins/echo/entries/asleep", json={"seconds": 30}, headers=AUTH, timeout=aiohttp.ClientTimeout(total=0.3))
    await wait_for(lambda: service.sup.status("echo").failures == 1 and service.sup.status("echo").in_flight == 0)
    async with service.client.get("/metrics", headers=AUTH) as response:
        text = await response.text()
    assert _sample(text, "neko_calls_total", plugin="echo", entry="asleep", outcome="cancelled") == 1
    assert _sample(text, "neko_calls_total", plugin="echo", entry="asleep", outcome="ok") is None


# -- auth and hosts ------------------------------------------------------------------------
def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"plugin": "echo", "entry": "echo"}.get(m.group(1), "x"), path)


async def test_every_route_but_the_health_checks_needs_the_token(make_service: Callable[..., Awaitable[Service]]) -> None:
    """Enumerates the app's routes: a route added later cannot skip the guard."""
    service = await make_service("echo")
    routes = [(route.method, route.resource.canonical) for route in service.app.router.routes() if route.resource is not None]
    assert {path for method, path in routes if method == "GET"} >= {"/livez", "/readyz", "/metrics", "/v1/plugins"}
    bad_headers: list[dict[str, str] | None] = [
        None,
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer ünïcödé-tökén"},
        {"Authorization": f"Bearer {TOKEN}\u00e9"},
    ]
    checked = 0
    for method, path in routes:
        if method == "HEAD":
            continue
        for headers in bad_headers:
            async with service.client.request(method, _concrete(path), headers=headers, data=b"{}") as response:
                body = await response.text()
                if path in PUBLIC_PATHS:
                    assert response.status == 200, (method, path)
                    continue
                assert response.status == 401, (method, path, headers, body)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert str(service.folder) not in body and "Traceback" not in body
                checked += 1
    guarded = [route for route in routes if route[1] not in PUBLIC_PATHS and route[0] != "HEAD"]
    assert len(guarded) >= 8
    assert checked == len(guarded) * len(bad_headers)
    assert {"/livez", "/readyz", "/", "/static/app.js", "/static/chart.js", "/static/forms.js", "/static/app.css"} == PUBLIC_PATHS
    assert service.sup.status("echo").calls == 0
    # An unknown path says nothing either before the token.
    status, body = await service.get("/v1/secret-admin", headers=None)
    assert (status, body["error"]["type"]) == (401, "Unauthorized")
    status, body = await service.get("/v1/secret-admin")
    assert (status, body["error"]["type"]) == (404, "NotFound")
    async with service.client.delete("/v1/plugins", headers=AUTH) as response:
        assert response.status == 405 and (await response.json())["error"]["type"] == "MethodNotAllowed"
        assert "GET" in response.headers["Allow"]


async def test_a_foreign_host_name_is_refused_on_every_route(make_service: Callable[..., Awaitable[Service]]) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 still sends its own Host."""
    service = await make_service("echo")
    for path in ("/livez", "/v1/plugins", "/metrics"):
        status, body = await service.get(path, headers={**AUTH, "Host": "evil.example:8765"})
        assert (status, body["error"]["type"]) == (421, "HostNotAllowed"), path
    for host in ("localhost:8765", "127.0.0.1", "[::1]:8765"):
        status, _ = await service.get("/v1/plugins", headers={**AUTH, "Host": host})
        assert status == 200, host


async def test_while_stopping_new_calls_and_lifecycle_changes_are_refused(make_service: Callable[..., Awaitable[Service]]) -> None:
    service = await make_service("echo")
    service.state.stopping = True
    status, body = await service.call("echo", "ping")
    assert (status, body["error"]["type"]) == (503, "ServiceStopping")
    status, body = await service.post("/v1/plugins/echo/start")
    assert status == 503
    status, body = await service.get("/v1/plugins/echo")
    assert status == 200 and body["plugin"]["state"] == "running"


async def test_a_restart_racing_the_supervisors_stop_starts_no_new_worker(tmp_path: Path) -> None:
    """SIGTERM while a restart is under way: the stop it joins is the last word."""
    sup = Supervisor(copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"]), log_dir=False)
    await sup.start()
    restarting = asyncio.create_task(sup.restart("echo"))  # runs first: its stop is under way...
    stopping = asyncio.create_task(sup.stop())              # ...when the supervisor's stop joins it
    restarted, _ = await asyncio.gather(restarting, stopping, return_exceptions=True)
    assert isinstance(restarted, PluginUnavailable) and "the supervisor is stopping" in str(restarted)
    assert (sup.status("echo").state, sup.status("echo").pid) == ("stopped", None)
