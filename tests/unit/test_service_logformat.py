"""The service's log lines: one line per record, plain text or JSON, UTC timestamps."""

from __future__ import annotations

import calendar
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.service.logformat import JsonFormatter, TextFormatter, configure

CREATED = calendar.timegm((2026, 11, 25, 10, 0, 0)) + 0.25  # exact in binary: 250 ms
STAMP = "2026-11-25T10:00:00.250Z"


@pytest.fixture(autouse=True)
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 9 hours ahead of UTC, so a timestamp in local time would show."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def make_record(msg: str, *, level: int = logging.INFO, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("supervisor.service", level, __file__, 1, msg, None, exc_info)
    record.created = CREATED
    record.__dict__.update(extra)
    return record


def raised(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


# -- text ---------------------------------------------------------------------------
def test_text_names_the_logger_with_a_utc_timestamp() -> None:
    line = TextFormatter().format(make_record("listening on http://127.0.0.1:8765"))
    assert line == f"{STAMP} INFO  supervisor.service: listening on http://127.0.0.1:8765"


def test_text_names_the_plugin_and_source_of_a_plugin_record() -> None:
    formatter = TextFormatter()
    line = formatter.format(make_record("loading data.db", level=logging.WARNING, plugin="p", source="stderr"))
    assert line == f"{STAMP} WARNING [p] stderr: loading data.db"
    assert formatter.format(make_record("hi", plugin="p")) == f"{STAMP} INFO  [p] log: hi"


def test_text_escapes_newlines_and_backslashes() -> None:
    line = TextFormatter().format(make_record("first\nsecond\r\nthird C:\\new"))
    assert line == f"{STAMP} INFO  supervisor.service: first\\nsecond\\r\\nthird C:\\\\new"


def test_text_escapes_terminal_control_characters_from_a_plugin() -> None:
    """A plugin's stderr must not move the operator's cursor, recolour or clear the screen."""
    line = TextFormatter().format(make_record("\x1b[2J\x1b[31mred\x00\x07\x7f\x9b\tü", plugin="p", source="stderr"))
    assert line == f"{STAMP} INFO  [p] stderr: \\x1b[2J\\x1b[31mred\\x00\\x07\\x7f\\x9b\tü"
    assert all(ch == "\t" or ch.isprintable() for ch in line)


def test_text_keeps_an_exception_on_the_same_line() -> None:
    line = TextFormatter().format(make_record("call failed", level=logging.ERROR, exc=raised("boom\nagain")))
    assert "\n" not in line and "\r" not in line
    assert line.startswith(f"{STAMP} ERROR supervisor.service: call failed\\nTraceback (most recent call last):\\n")
    assert line.endswith("ValueError: boom\\nagain")


# -- JSON ---------------------------------------------------------------------------
def test_json_is_one_object_per_line() -> None:
    line = JsonFormatter().format(make_record("first\nsecond"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": STAMP,
        "level": "INFO",
        "logger": "supervisor.service",
        "message": "first\nsecond",
    }


def test_json_names_the_plugin_and_source() -> None:
    line = JsonFormatter().format(make_record("loading", plugin="persistent", source="stderr"))
    assert json.loads(line) == {
        "time": STAMP,
        "level": "INFO",
        "logger": "supervisor.service",
        "plugin": "persistent",
        "source": "stderr",
        "message": "loading",
    }


def test_json_puts_the_exception_in_the_message() -> None:
    line = JsonFormatter().format(make_record("call failed", level=logging.ERROR, exc=raised("boom")))
    assert "\n" not in line
    message = json.loads(line)["message"]
    assert message.startswith("call failed\nTraceback (most recent call last):\n")
    assert message.endswith("ValueError: boom")


def test_json_keeps_non_ascii_text() -> None:
    line = JsonFormatter().format(make_record("ねこ: café ✓", plugin="插件"))
    assert "ねこ: café ✓" in line and "插件" in line
    assert json.loads(line)["message"] == "ねこ: café ✓"


# -- configure ----------------------------------------------------------------------
def test_configure_refuses_an_unknown_format(root_logger: logging.Logger) -> None:
    before = root_logger.handlers[:]
    with pytest.raises(ValueError, match=r"one of text, json, got 'xml'"):
        configure("xml", logging.INFO)
    assert root_logger.handlers == before


def test_configure_replaces_the_root_handlers(root_logger: logging.Logger) -> None:
    root_logger.addHandler(logging.NullHandler())
    stream = io.StringIO()
    configure("json", logging.DEBUG, stream)
    [handler] = root_logger.handlers
    assert isinstance(handler, logging.StreamHandler) and handler.stream is stream
    assert isinstance(handler.formatter, JsonFormatter)
    assert root_logger.level == logging.DEBUG
    logging.getLogger("supervisor.test").debug("one\ntwo", extra={"plugin": "p", "source": "stderr"})
    [line] = stream.getvalue().splitlines()
    assert json.loads(line) | {"time": "-"} == {
        "time": "-",
        "level": "DEBUG",
        "logger": "supervisor.test",
        "plugin": "p",
        "source": "stderr",
        "message": "one\ntwo",
    }


def test_configure_text_at_info_drops_debug(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure("text", logging.INFO, stream)
    logger = logging.getLogger("supervisor.test")
    logger.debug("hidden")
    logger.info("shown\nhere")
    [line] = stream.getvalue().splitlines()
    assert line.endswith("Z INFO  supervisor.test: shown\\nhere")


def test_configure_writes_to_stderr_by_default(root_logger: logging.Logger) -> None:
    configure("text", logging.INFO)
    [handler] = root_logger.handlers
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
