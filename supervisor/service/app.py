"""The HTTP API: routes mapped onto the `Supervisor` API, its errors onto status codes.

    GET  /livez, /readyz                         no token
    GET  /v1/plugins                             {"plugins": [...]}
    GET  /v1/plugins/{id}                        {"plugin": {..., "entries": [...]}}
    POST /v1/plugins/{id}/entries/{entry}        body: the arguments object; ?timeout=S
                                                 -> {"ok": true, "value": ...}
    POST /v1/plugins/{id}/restart|stop|start     -> {"ok": true, "plugin": {...}}
    GET  /v1/plugins/{id}/logs?tail=N[&after=P]  {"plugin": id, "lines": [...], "next": P2, "skipped": K}
    GET  /v1/plugins/{id}/history                {"plugin": id, "bucket_seconds": 5, "window_buckets": 120, "buckets": [...]}
    GET  /v1/events                              text/event-stream of snapshots (see live.py)
    GET  /metrics                                Prometheus text (token needed too)
    GET  /, /static/*.js, /static/app.css        the dashboard (see dashboard.py)

Every route but /livez, /readyz and the dashboard's files needs `Authorization: Bearer TOKEN`; the
guard runs before any route, so an unknown path without a token is a 401 too
and reveals nothing. Handlers stay thin: parse, call the supervisor, answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from supervisor import jsonvalue
from supervisor.errors import PluginError, PluginUnavailable, ResultNotSerializable
from supervisor.lifecycle import PluginState
from supervisor.manifest import ID_PATTERN
from supervisor.service import dashboard
from supervisor.service.auth import HostPolicy, Token
from supervisor.service.errors import (
    ServiceError,
    classify,
    error_response,
    json_response,
    plugin_error_response,
    service_error_response,
)
from supervisor.service.history import CallHistory
from supervisor.service.live import LiveFeed, stream_events
from supervisor.service.metrics import CONTENT_TYPE, ServiceMetrics
from supervisor.service.views import plugin_detail, plugin_summary
from supervisor.supervisor import Supervisor

PUBLIC_PATHS = frozenset({"/livez", "/readyz"}) | dashboard.PATHS
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_TIMEOUT = 300.0
DEFAULT_LOG_TAIL = 100
MAX_ENTRY_ID = 256
DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    token: Token
    hosts: HostPolicy
    max_body: int = DEFAULT_MAX_BODY            # bytes of a request body
    max_timeout: float = DEFAULT_MAX_TIMEOUT    # a caller's ?timeout= is clamped to this


@dataclass(slots=True)
class ServiceState:
    """Where the service is in its life; /readyz reports it."""

    ready: bool = False      # discovery done and start-up settled
    stopping: bool = False   # a signal came: no new calls or lifecycle changes
    started_at: float = field(default_factory=time.monotonic)


SUPERVISOR = web.AppKey("supervisor", Supervisor)
CONFIG = web.AppKey("config", ServiceConfig)
STATE = web.AppKey("state", ServiceState)
METRICS = web.AppKey("metrics", ServiceMetrics)
HISTORY = web.AppKey("history", CallHistory)
FEED = web.AppKey("feed", LiveFeed)


def create_app(sup: Supervisor, config: ServiceConfig, state: ServiceState | None = None) -> web.Application:
    """The aiohttp application for `sup` (which the caller starts and stops)."""
    # aiohttp refuses a body of client_max_size bytes or more; ours may be max_body.
    app = web.Application(middlewares=[_answer_errors, _guard], client_max_size=config.max_body + 1)
    app.on_response_prepare.append(_no_server_header)
    app[SUPERVISOR] = sup
    app[CONFIG] = config
    app[STATE] = state if state is not None else ServiceState()
    statuses = lambda: sup.statuses() if sup.started else []  # noqa: E731 - one line, three users
    app[METRICS] = ServiceMetrics(statuses)
    app[HISTORY] = CallHistory()
    app[FEED] = LiveFeed(statuses, lambda: _service_view(app[STATE]), app[HISTORY])
    app.cleanup_ctx.append(_run_feed)
    app.on_shutdown.append(_close_feed)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/plugins", list_plugins)
    app.router.add_get("/v1/plugins/{plugin}", get_plugin)
    app.router.add_post("/v1/plugins/{plugin}/entries/{entry}", call_entry)
    app.router.add_post("/v1/plugins/{plugin}/restart", restart_plugin)
    app.router.add_post("/v1/plugins/{plugin}/stop", stop_plugin)
    app.router.add_post("/v1/plugins/{plugin}/start", start_plugin)
    app.router.add_get("/v1/plugins/{plugin}/logs", plugin_logs)
    app.router.add_get("/v1/plugins/{plugin}/history", plugin_history)
    app.router.add_get("/v1/events", events)
    dashboard.add_routes(app)
    return app


async def _run_feed(app: web.Application) -> AsyncIterator[None]:
    sampler = asyncio.create_task(app[FEED].run(), name="neko-live-feed")
    yield
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler


async def _close_feed(app: web.Application) -> None:
    # Before aiohttp waits for handlers to finish: open event streams end now.
    app[FEED].close()


def _service_view(state: ServiceState) -> dict[str, Any]:
    return {"ready": state.ready, "stopping": state.stopping}


# -- middlewares ----------------------------------------------------------------
@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as the JSON error shape; nothing unexpected leaks a traceback."""
    try:
        return await handler(request)
    except ServiceError as exc:
        return service_error_response(exc)
    except PluginError as exc:
        return plugin_error_response(exc)
    except ConnectionResetError:
        # The client went away (mid-body, say): nobody will read an answer, and it is no bug of ours.
        request.app.logger.info("client left before %s %s was answered", request.method, request.path)
        return error_response(400, "ClientGone", "the connection was lost")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {name: value for name, value in exc.headers.items() if name.lower() == "allow"}  # 405 says what is
        return error_response(exc.status, exc.__class__.__name__.removeprefix("HTTP"), exc.reason, kept)
    except Exception:
        request.app.logger.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "InternalError", "the service hit an unexpected error; see its log")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    config, state = request.app[CONFIG], request.app[STATE]
    if not config.hosts.allows(request.headers.get("Host")):
        raise ServiceError(421, "HostNotAllowed", "this service does not answer to that Host name")
    # The raw path, as the router matches it: "/static%2Fapp.js" is no public file.
    if request.rel_url.raw_path not in PUBLIC_PATHS:
        if not config.token.matches(request.headers.get("Authorization")):
            raise ServiceError(401, "Unauthorized", "missing or wrong API token", {"WWW-Authenticate": 'Bearer realm="neko-supervisor"'})
        if not request.app[SUPERVISOR].started:
            raise ServiceError(503, "ServiceStarting", "the service is still discovering its plugins")
        if state.stopping and request.method == "POST":
            raise ServiceError(503, "ServiceStopping", "the service is shutting down")
    return await handler(request)


# -- routes ---------------------------------------------------------------------
async def livez(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.stopping:
        return json_response({"ready": False, "reason": "stopping"}, 503)
    if not state.ready:
        return json_response({"ready": False, "reason": "starting"}, 503)
    return json_response({"ready": True})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE})


async def list_plugins(request: web.Request) -> web.Response:
    return json_response({"plugins": [plugin_summary(status) for status in request.app[SUPERVISOR].statuses()]})


async def get_plugin(request: web.Request) -> web.Response:
    return json_response({"plugin": plugin_detail(request.app[SUPERVISOR].status(_plugin_id(request)))})


async def call_entry(request: web.Request) -> web.Response:
    sup, metrics_ = request.app[SUPERVISOR], request.app[METRICS]
    began = time.perf_counter()
    plugin_id, entry_id = _plugin_id(request), _entry_id(request)
    timeout = _timeout(request)
    args = await _arguments(request)
    outcome = "cancelled"  # unless it ends otherwise: the client hung up, or the server is closing
    try:
        value = await sup.call(plugin_id, entry_id, args, timeout=timeout)
        try:
            text = jsonvalue.dumps({"ok": True, "value": value})
        except ValueError as exc:
            raise ResultNotSerializable("ResultNotSerializable", str(exc), plugin_id=plugin_id, entry_id=entry_id) from None
        outcome = "ok"
    except PluginError as exc:
        _, outcome = classify(exc)
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        # Only entries the plugin declared become label values: a caller must not
        # be able to grow the series without bound (a stopped plugin, random names).
        if outcome != "not_found" and any(entry.id == entry_id for entry in sup.status(plugin_id).entries):
            seconds = time.perf_counter() - began
            metrics_.observe_call(plugin_id, entry_id, outcome, seconds)
            request.app[HISTORY].record_call(plugin_id, seconds, failed=outcome != "ok")
    return web.Response(text=text, content_type="application/json")


# Lifecycle changes are shielded: a client that hangs up mid-restart must not leave
# the plugin stopped (handlers are cancelled when their client goes away).
async def start_plugin(request: web.Request) -> web.Response:
    sup, plugin_id = request.app[SUPERVISOR], _plugin_id(request)
    await asyncio.shield(sup.start_plugin(plugin_id))
    return await _after_start(request, plugin_id)


async def restart_plugin(request: web.Request) -> web.Response:
    sup, plugin_id = request.app[SUPERVISOR], _plugin_id(request)
    await asyncio.shield(sup.restart(plugin_id))
    return await _after_start(request, plugin_id)


async def stop_plugin(request: web.Request) -> web.Response:
    sup, plugin_id = request.app[SUPERVISOR], _plugin_id(request)
    await asyncio.shield(sup.stop_plugin(plugin_id))
    return json_response({"ok": True, "plugin": plugin_detail(sup.status(plugin_id))})


async def plugin_logs(request: web.Request) -> web.Response:
    """The last `tail` lines; with `after` (a former answer's `next`), only the
    lines added since, of which `skipped` did not fit in `tail` or were dropped."""
    sup, plugin_id = request.app[SUPERVISOR], _plugin_id(request)
    tail = _int_query(request, "tail", DEFAULT_LOG_TAIL)
    after = _int_query(request, "after", -1)
    lines, skipped, position = sup.logs_after(plugin_id, max(after, 0), tail)
    if after < 0:
        skipped = 0  # a plain tail: the lines before it are history, not a gap
    return json_response({"plugin": plugin_id, "lines": lines, "next": position, "skipped": skipped})


async def plugin_history(request: web.Request) -> web.Response:
    sup, history, plugin_id = request.app[SUPERVISOR], request.app[HISTORY], _plugin_id(request)
    sup.status(plugin_id)  # an unknown plugin is a 404, not an empty chart
    return json_response({
        "plugin": plugin_id,
        "bucket_seconds": history.bucket_seconds,
        "window_buckets": history.kept,  # the chart's width; fewer buckets while the service is young
        "buckets": history.series(plugin_id),
    })


async def events(request: web.Request) -> web.StreamResponse:
    return await stream_events(request, request.app[FEED])


# -- request parsing ---------------------------------------------------------------
async def _after_start(request: web.Request, plugin_id: str) -> web.Response:
    """Answer once the start has come to an end: running (200), or failed or stopped
    (503). A first start that failed is retried under the restart policy: wait for
    that too, rather than say ok for a plugin in backoff."""
    sup, limit = request.app[SUPERVISOR], request.app[CONFIG].max_timeout
    try:
        state = await sup.wait_for_state(plugin_id, "running", "failed", "stopped", timeout=limit)
    except TimeoutError as exc:
        raise PluginUnavailable(plugin_id, str(exc)) from None
    status = sup.status(plugin_id)
    if state is not PluginState.RUNNING:
        detail = f"{state.value}: {status.error}" if status.error else state.value
        raise PluginUnavailable(plugin_id, detail)
    return json_response({"ok": True, "plugin": plugin_detail(status)})


def _plugin_id(request: web.Request) -> str:
    plugin_id = request.match_info["plugin"]
    if not ID_PATTERN.fullmatch(plugin_id) or len(plugin_id) > MAX_ENTRY_ID:
        raise ServiceError(400, "InvalidId", f"not a plugin id: {plugin_id[:80]!r} (letters, digits, '_' and '-')")
    return plugin_id


def _entry_id(request: web.Request) -> str:
    entry_id = request.match_info["entry"]
    if not entry_id or len(entry_id) > MAX_ENTRY_ID or not entry_id.isprintable():
        raise ServiceError(400, "InvalidId", f"not an entry id: {entry_id[:80]!r}")
    return entry_id


def _timeout(request: web.Request) -> float | None:
    text = request.query.get("timeout")
    if text is None:
        return None
    # Plain decimal ASCII only: float() would also take "1_0", "inf" and non-ASCII digits.
    value = float(text) if DECIMAL.fullmatch(text) else math.nan
    if not (math.isfinite(value) and value > 0):
        raise ServiceError(400, "InvalidArguments", f"timeout must be a number of seconds greater than 0, got {text[:40]!r}")
    return min(value, request.app[CONFIG].max_timeout)


def _int_query(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # isdigit() alone takes "²"
        raise ServiceError(400, "InvalidArguments", f"{name} must be a whole number >= 0, got {text[:40]!r}")
    return int(text)


async def _arguments(request: web.Request) -> dict[str, Any]:
    """The body: a JSON object of argument names to values (empty body: no arguments)."""
    limit = request.app[CONFIG].max_body
    if request.content_length is not None and request.content_length > limit:
        raise ServiceError(413, "RequestTooLarge", f"the body is {request.content_length} bytes; the limit is {limit}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ServiceError(413, "RequestTooLarge", f"the body is over the limit of {limit} bytes") from None
    if not body.strip():
        return {}
    try:
        args = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ServiceError(400, "InvalidJSON", f"the body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(args, dict):
        raise ServiceError(400, "InvalidArguments", f"the body must be a JSON object of arguments, got {type(args).__name__}")
    return args


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Which aiohttp and Python answer is nobody's business before the token.
    response.headers.pop("Server", None)
