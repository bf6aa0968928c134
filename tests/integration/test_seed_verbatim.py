"""Every code example of the N.E.K.O "Advanced topics" page runs unchanged in a worker.

The page is kept in docs/advanced-topics.md (checked against ../shared/seeds/
when that folder is beside the checkout). Each example becomes a plugin whose
source is the example's text plus the SDK import line; an example that shows
only a method is placed in a class, its own imports above it. The plugins in
plugins/ add entries around the same code; this test proves the page itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sqlite3
import textwrap
from pathlib import Path

import pytest
from aiohttp import web

from supervisor import EntryFailed, Supervisor
from worker import landlock

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "advanced-topics.md"
SHARED_PAGE = ROOT.parent / "shared" / "seeds" / "advanced-topics.md"
SDK_IMPORT = "from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry, lifecycle, timer_interval, Ok, Err, SdkError\n"

pytestmark = pytest.mark.usefixtures("no_leaks")


def examples() -> dict[str, str]:
    text = PAGE.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    found = {}
    for section in sections:
        title = section.splitlines()[0].strip()
        blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        assert len(blocks) == 1, f"section {title!r} should hold one example"
        found[title] = blocks[0]
    return found


def as_plugin_source(example: str) -> str:
    if re.search(r"^class ", example, flags=re.M):
        return SDK_IMPORT + example
    # A method shown on its own: its imports stay at module level, the rest
    # goes into a class, unchanged but for the indentation.
    lines = example.splitlines(keepends=True)
    imports = [line for line in lines if re.match(r"(import|from) \S", line)]
    body = "".join(line for line in lines if line not in imports)
    # The async example uses aiohttp without importing it (it is a fragment).
    extra = "import aiohttp\n" if "aiohttp." in example and "import aiohttp" not in example else ""
    return SDK_IMPORT + extra + "".join(imports) + "\n\nclass SeedPlugin(NekoPluginBase):\n" + textwrap.indent(body, "    ")


def write_plugins(root: Path) -> dict[str, str]:
    ids = {}
    for index, (title, example) in enumerate(examples().items()):
        plugin_id = f"seed{index}"
        folder = root / plugin_id
        folder.mkdir(parents=True)
        (folder / "plugin.toml").write_text(f'[plugin]\nid = "{plugin_id}"\nname = "{title}"\n\n[plugin_runtime]\ncall_timeout = 30\nnetwork = true\n')
        (folder / "__init__.py").write_text(as_plugin_source(example))
        ids[title] = plugin_id
    return ids


def test_the_page_is_the_shared_seed() -> None:
    if not SHARED_PAGE.exists():
        pytest.skip("shared/ is not beside this checkout; docs/advanced-topics.md is the copy")
    assert PAGE.read_text() == SHARED_PAGE.read_text()


def test_the_page_has_the_five_examples() -> None:
    assert list(examples()) == [
        "Async programming",
        "Thread safety",
        "Error handling with retry",
        "Custom configuration",
        "Data persistence with SQLite",
    ]


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
async def test_every_example_runs_unchanged_in_a_worker(tmp_path: Path, sandbox: bool) -> None:
    async def payload(_request: web.Request) -> web.Response:
        return web.json_response({"temperature": 21})

    app = web.Application()
    app.router.add_get("/data", payload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/data"
    ids = write_plugins(tmp_path / "plugins")
    try:
        async with Supervisor(tmp_path / "plugins", log_dir=tmp_path / "logs", sandbox=sandbox) as sup:
            for plugin_id in ids.values():
                assert sup.status(plugin_id).state == "running", sup.status(plugin_id).error
                assert bool(sup.status(plugin_id).protections["sandbox"]["abi"]) is (sandbox and landlock.abi_version() > 0)

            async_id = ids["Async programming"]
            assert await sup.call(async_id, "async_task", {"url": url}) == {"data": {"temperature": 21}}

            thread_id = ids["Thread safety"]
            assert await sup.call(thread_id, "update", {"key": "k", "value": "v"}) == {"updated": True}

            retry_id = ids["Error handling with retry"]
            if sandbox:
                pass  # the same call as unsandboxed, and without requests 8 s of tenacity's waits: once is enough
            elif importlib.util.find_spec("requests") is not None:
                assert await sup.call(retry_id, "reliable_fetch", {"url": url}) == {"data": {"temperature": 21}}
            else:
                # Unchanged, the example needs `requests`, which this project does not
                # install: tenacity retries 3 times (4 s apart), then gives up.
                with pytest.raises(EntryFailed) as caught:
                    await sup.call(retry_id, "reliable_fetch", {"url": url})
                assert caught.value.type_name == "RetryError"
                assert "ModuleNotFoundError" in caught.value.traceback

            config_id = ids["Custom configuration"]
            # No entries in the example: it constructs, and reads its defaults from beside plugin.toml.
            assert sup.status(config_id).entries == ()
            assert not (tmp_path / "plugins" / config_id / "config.json").exists()

            db_id = ids["Data persistence with SQLite"]
            assert await sup.call(db_id, "save", {"key": "a", "value": "b"}) == {"saved": True}
            assert await sup.call(db_id, "save", {"key": "a", "value": "c"}) == {"saved": True}
    finally:
        await runner.cleanup()
    with contextlib.closing(sqlite3.connect(tmp_path / "plugins" / db_id / "data.db")) as conn:
        assert conn.execute("SELECT key, value FROM records").fetchall() == [("a", "c")]
