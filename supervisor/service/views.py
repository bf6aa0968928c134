"""A plugin's status as the JSON the API returns."""

from __future__ import annotations

from typing import Any

from supervisor.errors import ExitInfo
from supervisor.slot import PluginStatus


def plugin_summary(status: PluginStatus) -> dict[str, Any]:
    """One row of `GET /v1/plugins`."""
    return {
        "id": status.id,
        "name": status.name,
        "version": status.version,
        "state": status.state.value,
        "pid": status.pid,
        "restarts": status.restarts,
        "uptime": status.uptime,
        "last_exit": exit_view(status.last_exit),
        "error": status.error,
        "calls": status.calls,
        "failures": status.failures,
        "in_flight": status.in_flight,
        "queued": status.queued,
        "memory_rss": status.memory_rss,
        "cpu_time": status.cpu_time,
        "processes": status.processes,
        "spare_pid": status.spare_pid,
        "log_lines": status.log_lines,
        "where": status.where,
    }


def plugin_detail(status: PluginStatus) -> dict[str, Any]:
    """`GET /v1/plugins/{id}`: the summary, its entries, how it is confined, manifest warnings."""
    return {
        **plugin_summary(status),
        "entries": [
            {
                "id": entry.id,
                "name": entry.name,
                "description": entry.description,
                "input_schema": entry.input_schema,
                "timeout": entry.timeout,
                "is_async": entry.is_async,
            }
            for entry in status.entries
        ],
        "protections": status.protections,
        "warnings": list(status.warnings),
        "log_path": status.log_path,
    }


def exit_view(info: ExitInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "pid": info.pid,
        "exit_code": info.exit_code,
        "signal": info.signal,
        "reason": info.reason,
        "description": info.describe(),
    }
