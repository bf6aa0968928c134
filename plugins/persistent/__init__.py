"""PersistentPlugin: key/value records in SQLite (data.db beside plugin.toml).

Entries: `save(key, value)` -> `{"saved": True}` (verbatim from advanced-topics.md),
`load(key)` -> `{"key": key, "value": <value or None>}`, `keys()` -> `{"keys": [...sorted]}`.
Each call opens its own connection, as the seed does, so calls on different worker threads
never share one. No @neko_plugin: the class is found through the manifest or as the only subclass.
"""

import sqlite3

from worker.sdk import NekoPluginBase, plugin_entry


class PersistentPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.db_path = ctx.config_path.parent / "data.db"
        self._init_db()

    def _init_db(self):
        conn = sqlite3.connect(self.db_path)
        conn.execute("""
            CREATE TABLE IF NOT EXISTS records (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                key TEXT UNIQUE,
                value TEXT,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
            )
        """)
        conn.commit()
        conn.close()

    # The seed's text, kept verbatim (the formatter would join the execute() call).
    # fmt: off
    @plugin_entry(id="save")
    def save(self, key: str, value: str, **_):
        conn = sqlite3.connect(self.db_path)
        conn.execute(
            "INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)",
            (key, value)
        )
        conn.commit()
        conn.close()
        return {"saved": True}
    # fmt: on

    @plugin_entry(id="load", description="One record's value; None when the key is absent.")
    def load(self, key: str, **_):
        conn = sqlite3.connect(self.db_path)
        try:
            row = conn.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
        return {"key": key, "value": row[0] if row is not None else None}

    @plugin_entry(id="keys", description="All keys, sorted.")
    def keys(self, **_):
        conn = sqlite3.connect(self.db_path)
        try:
            rows = conn.execute("SELECT key FROM records ORDER BY key").fetchall()
        finally:
            conn.close()
        return {"keys": [key for (key,) in rows]}
