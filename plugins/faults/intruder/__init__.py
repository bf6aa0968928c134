"""Fault: a plugin that reaches for what is not its own. Every entry reports what
happened instead of raising, so a test can tell "refused" from "worked":
`{"ok": True, ...}` or `{"ok": False, "error": "PermissionError: ..."}`.

- `read(path)`: read a file (another plugin's data.db, a file outside its folder).
- `write(path, text)`: create or overwrite a file.
- `env(name)`: a variable of the worker's environment (a host token?).
- `connect(host, port)`: open a TCP connection.
- `signal(pid)`: send signal 0 to a process (the supervisor, another worker).
- `store(key, value)`: SQLite in its own folder, as the seed's persistence example does.
"""

import os
import socket
import sqlite3
from pathlib import Path

from worker.sdk import NekoPluginBase, plugin_entry


def _attempt(action):
    try:
        return {"ok": True, "value": action()}
    except (OSError, sqlite3.Error) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


class IntruderPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.folder = ctx.config_path.parent

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="read")
    def read(self, path: str, **_):
        return _attempt(lambda: len(Path(path).read_bytes()))

    @plugin_entry(id="write")
    def write(self, path: str, text: str = "x", **_):
        return _attempt(lambda: Path(path).write_text(text))

    @plugin_entry(id="env")
    def env(self, name: str, **_):
        return os.environ.get(name)

    @plugin_entry(id="connect")
    def connect(self, host: str, port: int, **_):
        def go():
            with socket.create_connection((host, port), timeout=5):
                return True

        return _attempt(go)

    @plugin_entry(id="signal")
    def signal(self, pid: int, **_):
        return _attempt(lambda: os.kill(pid, 0))

    @plugin_entry(id="store")
    def store(self, key: str, value: str, **_):
        def go():
            conn = sqlite3.connect(self.folder / "data.db")
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
                conn.commit()
                return conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()[0]
            finally:
                conn.close()

        return _attempt(go)
