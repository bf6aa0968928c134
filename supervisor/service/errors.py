"""Supervisor errors as HTTP answers: one table, one JSON shape.

    {"ok": false, "error": {"type": "CallTimeout", "message": "call echo.slow timed out after 1 s"}}

An `EntryFailed` also carries the remote type and traceback; only an
authenticated caller ever reaches a route that can raise it (see auth.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from supervisor import jsonvalue
from supervisor.errors import (
    CallTimeout,
    EntryFailed,
    EntryNotFound,
    InvalidArguments,
    ManifestError,
    PluginError,
    PluginNotFound,
    PluginOverloaded,
    PluginUnavailable,
    ProtocolError,
    WorkerCrashed,
)

# Most specific first: the first class an error is an instance of decides.
STATUS_OF: tuple[tuple[type[PluginError], int, str], ...] = (
    (InvalidArguments, 400, "invalid_arguments"),
    (PluginNotFound, 404, "not_found"),
    (EntryNotFound, 404, "not_found"),
    (EntryFailed, 422, "entry_failed"),   # ResultNotSerializable included
    (PluginOverloaded, 429, "overloaded"),
    (WorkerCrashed, 502, "crashed"),
    (ProtocolError, 502, "crashed"),      # the worker broke the protocol and was killed
    (PluginUnavailable, 503, "unavailable"),
    (ManifestError, 503, "unavailable"),
    (CallTimeout, 504, "timeout"),
)


class ServiceError(Exception):
    """An HTTP-level refusal (bad JSON, a bad id, no token) with its status code."""

    def __init__(self, status: int, type_name: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name
        self.message = message
        self.headers = headers or {}


def classify(exc: PluginError) -> tuple[int, str]:
    """(HTTP status, outcome label for the metrics) of a supervisor error."""
    for cls, status, outcome in STATUS_OF:
        if isinstance(exc, cls):
            return status, outcome
    return 500, "error"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=jsonvalue.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, type_name: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return json_response({"ok": False, "error": {"type": type_name, "message": message, **extra}}, status, headers)


def plugin_error_response(exc: PluginError) -> web.Response:
    status, _ = classify(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, EntryFailed):
        extra = {"remote_type": exc.type_name, "remote_message": exc.message, "traceback": exc.traceback}
    headers = {"Retry-After": "1"} if isinstance(exc, PluginOverloaded) else None
    return error_response(status, type(exc).__name__, str(exc), headers, **extra)


def service_error_response(exc: ServiceError) -> web.Response:
    return error_response(exc.status, exc.type_name, exc.message, exc.headers)
