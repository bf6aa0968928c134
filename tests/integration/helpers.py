"""Helpers for the integration tests: throwaway plugin folders and a deadline-bounded wait."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNTIME_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "auto_start": True,
    "timeout": 10,
    "call_timeout": 10,
    "shutdown_timeout": 5,
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def make_plugin(
    root: Path,
    folder: str,
    files: dict[str, str],
    *,
    entry: str | None = None,
    **runtime: Any,
) -> Path:
    """Write a plugin folder `root/folder` with a plugin.toml and the given source files.

    `files` maps file names to (dedented) source; `runtime` overrides keys of
    [plugin_runtime] (TOML forbids a key twice, so overrides replace defaults).
    """
    plugin_dir = root / folder
    plugin_dir.mkdir(parents=True)
    lines = ["[plugin]", f'id = "{folder}"', f'name = "{folder}"', 'version = "0.1.0"']
    if entry is not None:
        lines.append(f'entry = "{entry}"')
    lines += ["", "[plugin_runtime]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in {**RUNTIME_DEFAULTS, **runtime}.items()]
    (plugin_dir / "plugin.toml").write_text("\n".join(lines) + "\n")
    for name, source in files.items():
        (plugin_dir / name).write_text(textwrap.dedent(source).lstrip())
    return plugin_dir


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `predicate()` holds; fail after `timeout` seconds.

    A poll of state bounded by a deadline (for state that has no event to wait
    on, such as lines arriving in a log), never synchronisation by sleep.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file once symlinks are resolved."""
    return Path(a).resolve() == Path(b).resolve()


def text_of(path: str | Path) -> str:
    """A file's text, or "" while it does not exist yet."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""
