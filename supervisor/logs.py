"""A plugin's log: its stderr and its forwarded log records, in a file and an in-memory tail.

One `PluginLog` lives as long as the plugin's slot, across worker restarts, so
the tail shows what happened just before a crash. stderr arrives in arbitrary
chunks; lines are assembled here, and a line longer than `max_line` is cut
into pieces rather than buffered without bound (a 200 kB line must not break it).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
from pathlib import Path
from typing import IO

DEFAULT_TAIL_LINES = 1000
DEFAULT_MAX_LINE = 8192
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024


def make_folders(folder: Path, mode: int = 0o700) -> None:
    """`mkdir -p` that gives every level it creates `mode`: Path.mkdir(parents=True)
    leaves the parents to the umask, and under a shared /tmp a umask of 002 would
    make them group-writable. Folders that exist are left as they are."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            each.mkdir(mode)


class PluginLog:
    def __init__(
        self,
        plugin_id: str,
        path: Path | None,
        *,
        tail_lines: int = DEFAULT_TAIL_LINES,
        max_line: int = DEFAULT_MAX_LINE,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.plugin_id = plugin_id
        self.path = path
        self.max_line = max_line
        self.max_file_bytes = max_file_bytes
        self.logger = logging.getLogger(f"supervisor.plugin.{plugin_id}")
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.appended = 0  # lines ever added to the tail: a position readers can resume from
        self._partial = bytearray()
        self._file: IO[bytes] | None = None
        self._file_size = 0
        # Per worker: the last lines of *its* stderr, for WorkerCrashed messages.
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=100)

    # -- input -----------------------------------------------------------
    def feed_stderr(self, data: bytes) -> None:
        self._write_file(data)
        self._partial += data
        while True:
            cut = self._partial.find(b"\n")
            if cut < 0:
                if len(self._partial) > self.max_line:
                    cut = self.max_line
                else:
                    break
                line, rest = self._partial[:cut], self._partial[cut:]
            else:
                line, rest = self._partial[:cut], self._partial[cut + 1 :]
            self._partial = bytearray(rest)
            self._stderr_line(bytes(line))

    def end_stderr(self) -> None:
        """The worker's stderr closed: flush a last unterminated line."""
        if self._partial:
            line, self._partial = bytes(self._partial), bytearray()
            self._stderr_line(line)

    def new_worker(self, pid: int) -> None:
        self._stderr_tail.clear()
        self.event(f"worker {pid} started")

    def record(self, level: int, logger_name: str, text: str) -> None:
        """A log record forwarded by the worker."""
        line = f"{logging.getLevelName(level)} {logger_name}: {text}"
        self._append(line)
        self._write_file(line.encode("utf-8", "replace") + b"\n")
        self.logger.log(level, "%s", text, extra={"plugin": self.plugin_id, "source": logger_name})

    def event(self, text: str, level: int = logging.INFO) -> None:
        """Something the supervisor did or saw (start, crash, restart)."""
        line = f"[supervisor] {text}"
        self._append(line)
        self._write_file(line.encode("utf-8", "replace") + b"\n")
        self.logger.log(level, "%s", text, extra={"plugin": self.plugin_id, "source": "supervisor"})

    # -- output ----------------------------------------------------------
    def tail(self, n: int | None = None) -> list[str]:
        lines = list(self._tail)
        return lines if n is None else lines[-n:] if n > 0 else []

    def after(self, position: int, limit: int) -> tuple[list[str], int]:
        """The lines added since `position` (a former `appended`), at most the last
        `limit` of them, and how many of those new lines are not returned (beyond
        `limit`, or already gone from the tail)."""
        new = min(max(self.appended - position, 0), len(self._tail))
        missed = max(self.appended - position, 0) - new
        kept = min(new, max(limit, 0))
        lines = list(itertools.islice(self._tail, len(self._tail) - kept, None)) if kept else []
        return lines, missed + new - kept

    def stderr_tail(self) -> list[str]:
        return list(self._stderr_tail)

    def close(self) -> None:
        self.end_stderr()
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- internals -------------------------------------------------------
    def _append(self, line: str) -> None:
        self._tail.append(line)
        self.appended += 1

    def _stderr_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self._append(text)
        self._stderr_tail.append(text)
        self.logger.info("%s", text, extra={"plugin": self.plugin_id, "source": "stderr"})

    def _write_file(self, data: bytes) -> None:
        if self.path is None:
            return
        try:
            self._write_file_or_raise(data)
        except OSError as exc:
            # A full disk or an unwritable log_dir must not stop the plugin (or
            # hang the supervisor): keep the in-memory tail, say so once.
            self.logger.warning("cannot write %s (%s); keeping this plugin's log in memory only", self.path, exc)
            self.path = None
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def _write_file_or_raise(self, data: bytes) -> None:
        assert self.path is not None
        if self._file is None:
            make_folders(self.path.parent)
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the log
            self._file_size = self._file.tell()
        if self._file_size + len(data) > self.max_file_bytes:
            # One rotated generation keeps the disk bounded for a service that runs for weeks.
            self._file.close()
            os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            self._file_size = 0
        self._file.write(data)
        self._file_size += len(data)
