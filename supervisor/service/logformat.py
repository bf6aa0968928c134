"""The service's log: one line per event on stderr, plain text or JSON lines.

    2026-11-25T10:00:00.123Z INFO  [persistent] stderr: loading data.db
    {"time": "2026-11-25T10:00:00.123Z", "level": "INFO", "plugin": "persistent", "source": "stderr", ...}

A plugin's stderr, its log records and the supervisor's events about it carry
the plugin's id (PluginLog sets `plugin` and `source` on each record). A
multi-line message (a traceback) stays one line: newlines and other control
characters are escaped in plain text, and JSON escapes them anyway.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

FORMATS = ("text", "json")


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _message(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + formatter.formatException(record.exc_info)
    if record.stack_info:
        text += "\n" + formatter.formatStack(record.stack_info)
    return text


# A plugin's output reaches the operator's terminal: control characters (newlines,
# terminal escape sequences, NULs) are written as escapes, never as themselves.
_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if code != 0x09}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\\"): "\\\\"}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        plugin = getattr(record, "plugin", None)
        where = f"[{plugin}] {getattr(record, 'source', 'log')}" if plugin else record.name
        text = _message(record, self).translate(_ESCAPES)
        return f"{_timestamp(record)} {record.levelname:<5} {where}: {text}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname, "logger": record.name}
        plugin = getattr(record, "plugin", None)
        if plugin:
            line["plugin"] = plugin
            line["source"] = getattr(record, "source", "log")
        line["message"] = _message(record, self)
        return json.dumps(line, ensure_ascii=False, default=str)


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse as an ERROR with a traceback that quotes
    the raw bytes, an Authorization header included. Anyone who can connect can send
    one: it is a one-line WARNING here, naming the client and the kind of error only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "malformed HTTP request from %s: %s (answered %s)", (remote, type(exc).__name__, exc.code)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(log_format: str, level: int, stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr) in `log_format`, one line each."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(each, MalformedRequests) for each in server_log.filters):
        server_log.addFilter(MalformedRequests())
