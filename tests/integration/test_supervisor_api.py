"""The public Supervisor API against real workers: errors, lifecycle, status, logs,
environment, the loader's rules for finding the plugin class, hooks, timers,
concurrency and Ok/Err results.

Throwaway plugins are written into tmp_path by each test (see helpers.make_plugin);
folder names carry an `itp_` prefix so they never shadow an installed module.
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor import (
    CallTimeout,
    EntryFailed,
    EntryNotFound,
    InvalidArguments,
    PluginError,
    PluginNotFound,
    PluginUnavailable,
    Supervisor,
    WorkerCrashed,
)
from tests.conftest import FAULT_PLUGINS, copy_plugins, pid_alive
from tests.integration.helpers import make_plugin, same_path, text_of, wait_for

pytestmark = pytest.mark.usefixtures("no_leaks")

RAISER = """
    from worker.sdk import NekoPluginBase, plugin_entry


    class Raiser(NekoPluginBase):
        @plugin_entry(id="boom")
        def boom(self, **_):
            raise ValueError("boom")

        @plugin_entry(id="aboom")
        async def aboom(self, **_):
            raise ValueError("async boom")

        @plugin_entry(id="nested")
        def nested(self, **_):
            try:
                {}["missing"]
            except KeyError as exc:
                raise RuntimeError("wrapped") from exc

        @plugin_entry(id="ping")
        def ping(self, **_):
            return "pong"
"""

OK_ERR = """
    from worker.sdk import Err, NekoPluginBase, Ok, plugin_entry


    class Results(NekoPluginBase):
        @plugin_entry(id="ok")
        def ok(self, **_):
            return Ok(5)

        @plugin_entry(id="aok")
        async def aok(self, **_):
            return Ok({"five": 5})

        @plugin_entry(id="ok_none")
        def ok_none(self, **_):
            return Ok()

        @plugin_entry(id="err")
        def err(self, **_):
            return Err("nope", type="Busy")

        @plugin_entry(id="aerr")
        async def aerr(self, **_):
            return Err("async nope", type="Busy")

        @plugin_entry(id="err_plain")
        def err_plain(self, **_):
            return Err("no such key")

        @plugin_entry(id="err_exception")
        def err_exception(self, **_):
            return Err(KeyError("k"))
"""

UNANSWERED = """
    import asyncio

    from worker.sdk import NekoPluginBase, plugin_entry


    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("str() of this exception fails")


    class Edges(NekoPluginBase):
        @plugin_entry(id="sys_exit")
        def sys_exit(self, **_):
            raise SystemExit(3)  # what sys.exit(3), or argparse on bad input, does in an entry

        @plugin_entry(id="unprintable")
        def unprintable(self, **_):
            raise Unprintable()

        @plugin_entry(id="aunprintable")
        async def aunprintable(self, **_):
            raise Unprintable()

        @plugin_entry(id="slow_default", timeout=0.4)
        async def slow_default(self, **_):
            await asyncio.sleep(30)

        @plugin_entry(id="ping")
        def ping(self, **_):
            return "pong"
"""

TALKER = """
    import sys

    from worker.sdk import NekoPluginBase, plugin_entry


    class Talker(NekoPluginBase):
        @plugin_entry(id="talk")
        def talk(self, tag: str, **_):
            print(f"printed {tag}")
            sys.stderr.write(f"stderr {tag}\\n")
            self.logger.warning("logged %s", tag)
            return tag
"""

HOOKS = """
    import asyncio
    import threading

    from worker.sdk import NekoPluginBase, lifecycle, plugin_entry


    class Hooks(NekoPluginBase):
        def __init__(self, ctx):
            super().__init__(ctx)
            self.seen = {}
            self.marker = ctx.config_path.parent / "shutdown.txt"

        @lifecycle(id="startup")
        def sync_startup(self):
            self.seen["sync_on_main_thread"] = threading.current_thread() is threading.main_thread()
            self.seen["sync_thread"] = threading.current_thread().name

        @lifecycle(id="startup")
        async def async_startup(self):
            await asyncio.sleep(0)
            self.seen["async_ran"] = True
            self.seen["async_on_main_thread"] = threading.current_thread() is threading.main_thread()

        @lifecycle(id="shutdown")
        def on_shutdown(self):
            self.marker.write_text(f"shutdown on main thread: {threading.current_thread() is threading.main_thread()}")

        @plugin_entry(id="seen")
        def get_seen(self, **_):
            return self.seen
"""


def which_plugin(*class_names: str, marked: str | None = None) -> str:
    """Source defining NekoPluginBase subclasses whose `which` entry returns the class name."""
    lines = ["from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry", ""]
    for name in class_names:
        lines += [
            "",
            *(["@neko_plugin"] if name == marked else []),
            f"class {name}(NekoPluginBase):",
            '    @plugin_entry(id="which")',
            "    def which(self, **_):",
            f'        return "{name}"',
            "",
        ]
    return "\n".join(lines)


@pytest.fixture
def echo_dir(tmp_path: Path) -> Path:
    return copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"])


@pytest.fixture
async def echo(echo_dir: Path, tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(echo_dir, log_dir=tmp_path / "logs") as sup:
        yield sup


# -- Errors from call() -------------------------------------------------------------
async def test_unknown_plugin_raises_plugin_not_found(echo: Supervisor) -> None:
    with pytest.raises(PluginNotFound) as caught:
        await echo.call("nope", "ping", timeout=5)
    assert isinstance(caught.value, LookupError)
    assert caught.value.plugin_id == "nope"
    assert "echo" in str(caught.value)  # names the known plugins
    for method in (echo.status, echo.logs):
        with pytest.raises(PluginNotFound):
            method("nope")
    with pytest.raises(PluginNotFound):
        await echo.restart("nope")


async def test_unknown_entry_raises_entry_not_found(echo: Supervisor) -> None:
    with pytest.raises(EntryNotFound) as caught:
        await echo.call("echo", "no_such_entry", timeout=5)
    assert isinstance(caught.value, LookupError)
    assert caught.value.plugin_id == "echo"
    assert caught.value.entry_id == "no_such_entry"
    assert "ping" in str(caught.value)  # lists the entries there are
    assert await echo.call("echo", "ping", timeout=5) == "pong"


async def test_missing_argument_raises_invalid_arguments(echo: Supervisor) -> None:
    pid = echo.status("echo").pid
    with pytest.raises(InvalidArguments) as caught:
        await echo.call("echo", "echo", {}, timeout=5)
    assert isinstance(caught.value, ValueError)
    assert "value" in str(caught.value)
    with pytest.raises(InvalidArguments):
        await echo.call("echo", "aecho", timeout=5)
    # The worker checked the arguments; it was not harmed.
    assert echo.status("echo").pid == pid
    assert await echo.call("echo", "echo", {"value": [1, "two", {"3": None}]}, timeout=5) == [1, "two", {"3": None}]


@pytest.mark.parametrize("args", [[1, 2], ("value", 1), "value=1", 42, {1: "not a name"}])
async def test_non_mapping_args_raise_invalid_arguments(echo: Supervisor, args: object) -> None:
    with pytest.raises(InvalidArguments):
        await echo.call("echo", "echo", args, timeout=5)  # type: ignore[arg-type]
    assert await echo.call("echo", "ping", timeout=5) == "pong"


async def test_entry_that_raises_gives_entry_failed_with_the_remote_traceback(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_raiser", {"__init__.py": RAISER})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        pid = sup.status("itp_raiser").pid
        with pytest.raises(EntryFailed) as caught:
            await sup.call("itp_raiser", "boom", timeout=5)
        error = caught.value
        assert isinstance(error, PluginError)
        assert str(error) == "ValueError: boom"
        assert (error.type_name, error.message) == ("ValueError", "boom")
        assert (error.plugin_id, error.entry_id) == ("itp_raiser", "boom")
        assert error.traceback.startswith("Traceback (most recent call last):")
        assert 'raise ValueError("boom")' in error.traceback
        assert error.traceback.rstrip().endswith("ValueError: boom")

        with pytest.raises(EntryFailed) as caught:
            await sup.call("itp_raiser", "aboom", timeout=5)
        assert str(caught.value) == "ValueError: async boom"
        assert 'raise ValueError("async boom")' in caught.value.traceback

        with pytest.raises(EntryFailed) as caught:
            await sup.call("itp_raiser", "nested", timeout=5)
        assert str(caught.value) == "RuntimeError: wrapped"
        assert "KeyError: 'missing'" in caught.value.traceback  # the chained cause travels too

        # An entry that raises does not take the worker down.
        status = sup.status("itp_raiser")
        assert (status.state, status.pid, status.restarts) == ("running", pid, 0)
        assert await sup.call("itp_raiser", "ping", timeout=5) == "pong"


async def test_ok_and_err_results(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_results", {"__init__.py": OK_ERR})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        assert await sup.call("itp_results", "ok", timeout=5) == 5
        assert await sup.call("itp_results", "aok", timeout=5) == {"five": 5}
        assert await sup.call("itp_results", "ok_none", timeout=5) is None

        for entry_id, message in (("err", "nope"), ("aerr", "async nope")):
            with pytest.raises(EntryFailed) as caught:
                await sup.call("itp_results", entry_id, timeout=5)
            assert caught.value.type_name == "Busy"
            assert caught.value.message == message
            assert str(caught.value) == f"Busy: {message}"

        with pytest.raises(EntryFailed) as caught:
            await sup.call("itp_results", "err_plain", timeout=5)
        assert str(caught.value) == "Err: no such key"

        with pytest.raises(EntryFailed) as caught:
            await sup.call("itp_results", "err_exception", timeout=5)
        assert caught.value.type_name == "KeyError"
        assert sup.status("itp_results").state == "running"


async def test_entry_timeout_from_the_decorator_is_the_default(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_edges", {"__init__.py": UNANSWERED})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        info = {entry.id: entry for entry in sup.status("itp_edges").entries}
        assert info["slow_default"].timeout == 0.4
        assert info["ping"].timeout is None
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CallTimeout) as caught:
            await sup.call("itp_edges", "slow_default")  # no timeout given: the entry's 0.4 s
        assert 0.4 <= loop.time() - started < 1.0
        assert caught.value.timeout == 0.4
        assert isinstance(caught.value, TimeoutError)
        assert await sup.call("itp_edges", "ping", timeout=5) == "pong"


@pytest.mark.parametrize("entry_id", ["sys_exit", "unprintable", "aunprintable"])
async def test_every_call_gets_an_answer_promptly_however_the_entry_ends(tmp_path: Path, entry_id: str) -> None:
    """worker/dispatch.py: "Exactly one Result is written per Call, whatever happens".

    An entry that ends by raising must be answered at once, whether as
    EntryFailed (the worker carries on) or as WorkerCrashed (the worker exited);
    never by the caller's own deadline running out.
    """
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_edges", {"__init__.py": UNANSWERED})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PluginError) as caught:
            await sup.call("itp_edges", entry_id, timeout=2)
        elapsed = loop.time() - started
        assert isinstance(caught.value, EntryFailed | WorkerCrashed), f"after {elapsed:.1f} s: {caught.value!r}"
        assert elapsed < 1.5, f"answered only after {elapsed:.1f} s"
        if isinstance(caught.value, EntryFailed):
            assert caught.value.type_name in {"SystemExit", "Unprintable"}
        assert await sup.call("itp_edges", "ping", timeout=5) == "pong"


# -- Lifecycle of one plugin --------------------------------------------------------
async def test_stop_then_start_plugin(echo: Supervisor) -> None:
    first_pid = echo.status("echo").pid
    assert first_pid is not None
    await echo.stop_plugin("echo")
    status = echo.status("echo")
    assert status.state == "stopped"
    assert status.pid is None
    assert not pid_alive(first_pid)
    with pytest.raises(PluginUnavailable) as caught:
        await echo.call("echo", "ping", timeout=5)
    assert "stopped" in str(caught.value)
    await echo.stop_plugin("echo")  # stopping twice is harmless
    assert echo.status("echo").state == "stopped"

    await echo.start_plugin("echo")
    status = echo.status("echo")
    assert status.state == "running"
    assert status.pid is not None and status.pid != first_pid
    assert await echo.call("echo", "pid", timeout=5) == status.pid
    await echo.start_plugin("echo")  # starting a running plugin is harmless
    assert echo.status("echo").pid == status.pid


async def test_restart_gives_a_new_worker(echo: Supervisor) -> None:
    first_pid = await echo.call("echo", "pid", timeout=5)
    assert first_pid == echo.status("echo").pid
    await echo.restart("echo")
    status = echo.status("echo")
    assert status.state == "running"
    assert status.pid is not None and status.pid != first_pid
    assert not pid_alive(first_pid)
    assert await echo.call("echo", "pid", timeout=5) == status.pid
    assert status.last_exit is not None and status.last_exit.pid == first_pid


async def test_statuses_lists_every_discovered_plugin(tmp_path: Path) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo", "timer"])
    make_plugin(plugins, "itp_off", {"__init__.py": which_plugin("Off")}, enabled=False)
    make_plugin(plugins, "itp_manual", {"__init__.py": which_plugin("Manual")}, auto_start=False)
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        states = {status.id: status.state for status in sup.statuses()}
        assert states == {"echo": "running", "timer": "running", "itp_off": "stopped", "itp_manual": "stopped"}
        assert sorted(sup.plugin_ids) == sorted(states)
        await sup.start_plugin("itp_manual")
        assert sup.status("itp_manual").state == "running"
        assert await sup.call("itp_manual", "which", timeout=5) == "Manual"


async def test_auto_start_false_starts_nothing(echo_dir: Path, tmp_path: Path) -> None:
    make_plugin(echo_dir, "itp_second", {"__init__.py": which_plugin("Second")})
    async with Supervisor(echo_dir, auto_start=False, log_dir=tmp_path / "logs") as sup:
        for status in sup.statuses():
            assert status.state == "stopped"
            assert status.pid is None
        with pytest.raises(PluginUnavailable):
            await sup.call("echo", "ping", timeout=5)
        await sup.start_plugin("echo")
        assert sup.status("echo").state == "running"
        assert await sup.call("echo", "ping", timeout=5) == "pong"
        assert sup.status("itp_second").state == "stopped"


async def test_disabled_plugin_stays_stopped_and_cannot_be_started(echo_dir: Path, tmp_path: Path) -> None:
    make_plugin(echo_dir, "itp_disabled", {"__init__.py": which_plugin("Disabled")}, enabled=False)
    async with Supervisor(echo_dir, log_dir=tmp_path / "logs") as sup:
        assert sup.status("itp_disabled").state == "stopped"
        assert sup.status("itp_disabled").pid is None
        with pytest.raises(PluginUnavailable) as caught:
            await sup.start_plugin("itp_disabled")
        assert "enabled" in str(caught.value)
        with pytest.raises(PluginUnavailable):
            await sup.call("itp_disabled", "which", timeout=5)
        assert sup.status("itp_disabled").state == "stopped"
        assert await sup.call("echo", "ping", timeout=5) == "pong"


async def test_bad_manifest_is_failed_and_names_file_and_key(echo_dir: Path, tmp_path: Path) -> None:
    bad = make_plugin(echo_dir, "itp_bad", {"__init__.py": which_plugin("Bad")}, restart="sometimes")
    async with Supervisor(echo_dir, log_dir=tmp_path / "logs") as sup:
        status = sup.status("itp_bad")
        assert status.state == "failed"
        assert status.pid is None
        assert status.error is not None
        assert str(bad / "plugin.toml") in status.error
        assert "plugin_runtime.restart" in status.error
        assert "sometimes" in status.error
        with pytest.raises(PluginUnavailable):
            await sup.call("itp_bad", "which", timeout=5)
        # The good plugin beside it is unaffected.
        assert sup.status("echo").state == "running"
        assert await sup.call("echo", "ping", timeout=5) == "pong"


async def test_fixed_manifest_is_read_again_by_start_plugin(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    bad = make_plugin(plugins, "itp_bad", {"__init__.py": which_plugin("Bad")}, restart="sometimes")
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        assert sup.status("itp_bad").state == "failed"
        with pytest.raises(PluginUnavailable) as caught:
            await sup.start_plugin("itp_bad")
        assert "plugin_runtime.restart" in str(caught.value)
        manifest = bad / "plugin.toml"
        manifest.write_text(manifest.read_text().replace('restart = "sometimes"', 'restart = "always"'))
        await sup.start_plugin("itp_bad")
        status = sup.status("itp_bad")
        assert status.state == "running"
        assert status.error is None
        assert await sup.call("itp_bad", "which", timeout=5) == "Bad"


async def test_duplicate_plugin_id_fails_the_second_folder(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_first", {"__init__.py": which_plugin("First")})
    second = make_plugin(plugins, "itp_second", {"__init__.py": which_plugin("Second")})
    manifest = second / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('id = "itp_second"', 'id = "itp_first"'))
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        assert sorted(sup.plugin_ids) == ["itp_first", "itp_second"]  # the loser keeps its folder name
        assert await sup.call("itp_first", "which", timeout=5) == "First"
        status = sup.status("itp_second")
        assert status.state == "failed"
        assert status.error is not None
        assert "plugin.id" in status.error and "duplicate" in status.error


async def test_plugin_id_need_not_match_the_folder(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    folder = make_plugin(plugins, "itp_folder", {"__init__.py": which_plugin("Named")})
    manifest = folder / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('id = "itp_folder"', 'id = "other-id"'))
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        assert sup.plugin_ids == ["other-id"]
        assert await sup.call("other-id", "which", timeout=5) == "Named"


# -- Logs and environment -----------------------------------------------------------
async def test_logs_hold_prints_stderr_and_log_records(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_talker", {"__init__.py": TALKER})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        assert await sup.call("itp_talker", "talk", {"tag": "meow-42"}, timeout=5) == "meow-42"

        def has(text: str) -> bool:
            return any(text in line for line in sup.logs("itp_talker"))

        await wait_for(lambda: has("printed meow-42") and has("stderr meow-42") and has("logged meow-42"))
        record = next(line for line in sup.logs("itp_talker") if "logged meow-42" in line)
        assert "WARNING" in record
        assert "plugin.itp_talker" in record  # the plugin's logger name
        assert sup.logs("itp_talker", tail=1) == sup.logs("itp_talker")[-1:]

        log_path = sup.status("itp_talker").log_path
        assert log_path is not None and Path(log_path).parent == tmp_path / "logs"
        await wait_for(lambda: "printed meow-42" in text_of(log_path))
        assert "logged meow-42" in text_of(log_path)

        # One log per plugin, across its workers: the old worker's lines stay.
        await sup.restart("itp_talker")
        assert await sup.call("itp_talker", "talk", {"tag": "purr-43"}, timeout=5) == "purr-43"
        await wait_for(lambda: has("printed purr-43"))
        lines = sup.logs("itp_talker")
        first = next(i for i, line in enumerate(lines) if "printed meow-42" in line)
        second = next(i for i, line in enumerate(lines) if "printed purr-43" in line)
        assert first < second


async def test_worker_environment_drops_host_secrets(echo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEKO_TEST_SECRET", "x")
    async with Supervisor(echo_dir, log_dir=tmp_path / "logs") as sup:
        seen = await sup.call("echo", "whoami", timeout=5)
    assert "NEKO_TEST_SECRET" not in seen["env"]
    assert seen["env"]["PATH"] == os.environ["PATH"]
    assert seen["env"]["HOME"] == os.environ["HOME"]
    assert same_path(seen["cwd"], echo_dir / "echo")


async def test_env_allow_passes_a_named_variable(echo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEKO_TEST_SECRET", "x")
    monkeypatch.setenv("NEKO_TEST_ALLOWED", "y")
    async with Supervisor(echo_dir, log_dir=tmp_path / "logs", env_allow=["NEKO_TEST_ALLOWED"]) as sup:
        env = (await sup.call("echo", "whoami", timeout=5))["env"]
    assert env["NEKO_TEST_ALLOWED"] == "y"
    assert "NEKO_TEST_SECRET" not in env


# -- Loader rules ---------------------------------------------------------------------
LOADER_CASES = {
    # folder: (files, plugin.entry, the class expected)
    "itp_submodule": ({"__init__.py": "", "core.py": which_plugin("CorePlugin")}, "itp_submodule.core:CorePlugin", "CorePlugin"),
    "itp_relative": ({"__init__.py": "", "core.py": which_plugin("CorePlugin")}, "core:CorePlugin", "CorePlugin"),
    "itp_neko_style": ({"__init__.py": which_plugin("NekoStyle")}, "plugin.plugins.itp_neko_style:NekoStyle", "NekoStyle"),
    "itp_neko_sub": ({"__init__.py": "", "impl.py": which_plugin("Deep")}, "plugin.plugins.itp_neko_sub.impl:Deep", "Deep"),
    "itp_marked": ({"__init__.py": which_plugin("Helper", "Chosen", marked="Chosen")}, None, "Chosen"),
    "itp_single": ({"__init__.py": which_plugin("Only")}, None, "Only"),
    "itp_single_sub": ({"__init__.py": "", "impl.py": which_plugin("InSubmodule")}, None, "InSubmodule"),
}


@pytest.mark.parametrize("folder", list(LOADER_CASES))
async def test_loader_finds_the_plugin_class(tmp_path: Path, folder: str) -> None:
    files, entry, expected = LOADER_CASES[folder]
    plugins = tmp_path / "plugins"
    make_plugin(plugins, folder, files, entry=entry)
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        status = sup.status(folder)
        assert status.state == "running", status.error
        assert [entry.id for entry in status.entries] == ["which"]
        assert await sup.call(folder, "which", timeout=5) == expected


async def test_two_unmarked_subclasses_without_entry_fail_to_load(echo_dir: Path, tmp_path: Path) -> None:
    make_plugin(echo_dir, "itp_ambiguous", {"__init__.py": which_plugin("First", "Second")})
    async with Supervisor(echo_dir, log_dir=tmp_path / "logs") as sup:
        # restart = "on-failure" (the default) retries a failed start with backoff
        # until the restart budget (max_restarts = 5) is spent, then gives up.
        assert await sup.wait_for_state("itp_ambiguous", "failed", timeout=10) == "failed"
        status = sup.status("itp_ambiguous")
        assert status.pid is None
        assert status.restarts == 5
        assert status.error is not None
        assert "several NekoPluginBase subclasses" in status.error
        assert "First" in status.error and "Second" in status.error
        with pytest.raises(PluginUnavailable):
            await sup.call("itp_ambiguous", "which", timeout=5)
        assert await sup.call("echo", "ping", timeout=5) == "pong"


async def test_load_error_with_restart_never_fails_at_once(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_ambiguous", {"__init__.py": which_plugin("First", "Second")}, restart="never")
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        status = sup.status("itp_ambiguous")
        assert status.state == "failed"
        assert status.restarts == 0
        assert status.error is not None and "several NekoPluginBase subclasses" in status.error


async def test_plugin_modules_named_like_the_workers_dependencies_do_not_shadow_them(tmp_path: Path) -> None:
    """The worker runs with -P: the plugin folder (its cwd) is not on sys.path."""
    plugins = tmp_path / "plugins"
    source = """
        import msgpack

        from worker.sdk import NekoPluginBase, plugin_entry


        class Shadowed(NekoPluginBase):
            @plugin_entry(id="where")
            def where(self, **_):
                return msgpack.__file__
    """
    poison = 'raise ImportError("the plugin folder shadowed an installed module")\n'
    folder = make_plugin(plugins, "itp_shadow", {"__init__.py": source, "msgpack.py": poison, "protocol.py": poison})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        status = sup.status("itp_shadow")
        assert status.state == "running", status.error
        where = Path(await sup.call("itp_shadow", "where", timeout=5))
        assert where.parent.name == "msgpack"  # the installed package, not folder/msgpack.py
        assert folder not in where.parents


# -- Hooks and timers -----------------------------------------------------------------
async def test_startup_hooks_run_sync_on_the_main_thread_and_async_too(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, "itp_hooks", {"__init__.py": HOOKS})
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        seen = await sup.call("itp_hooks", "seen", timeout=5)
    assert seen == {
        "sync_on_main_thread": True,
        "sync_thread": "MainThread",
        "async_ran": True,
        "async_on_main_thread": True,
    }


async def test_shutdown_hook_runs_on_stop_plugin_and_on_supervisor_exit(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    folder = make_plugin(plugins, "itp_hooks", {"__init__.py": HOOKS})
    marker = folder / "shutdown.txt"
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        assert not marker.exists()
        pid = sup.status("itp_hooks").pid
        assert pid is not None
        await sup.stop_plugin("itp_hooks")
        assert marker.read_text() == "shutdown on main thread: True"
        status = sup.status("itp_hooks")
        assert status.state == "stopped"
        assert status.last_exit is not None and status.last_exit.returncode == 0

        marker.unlink()
        await sup.start_plugin("itp_hooks")
        assert not marker.exists()
    assert marker.read_text() == "shutdown on main thread: True"


async def test_timer_keeps_ticking_through_failing_ticks(tmp_path: Path) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["timer"])
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        pid = sup.status("timer").pid
        assert await sup.call("timer", "started", timeout=5) is True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        ticks = await sup.call("timer", "ticks", timeout=5)
        while ticks < 10 and loop.time() < deadline:
            await asyncio.sleep(0.05)  # a deadline-bounded poll of the tick count
            ticks = await sup.call("timer", "ticks", timeout=5)
        # Ticks 3, 6 and 9 raised; the timer went on past them.
        assert ticks >= 10
        await wait_for(lambda: any("keeps running" in line for line in sup.logs("timer")))
        failure = next(line for line in sup.logs("timer") if "keeps running" in line)
        assert "'tick'" in failure
        assert any("fails on purpose; the timer must go on" in line for line in sup.logs("timer"))
        status = sup.status("timer")
        assert (status.state, status.pid, status.restarts) == ("running", pid, 0)


# -- Concurrency --------------------------------------------------------------------
@pytest.mark.parametrize("entry_id", ["sleep", "asleep"])
async def test_calls_run_concurrently(echo: Supervisor, entry_id: str) -> None:
    count, seconds = 20, 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(echo.call("echo", entry_id, {"seconds": seconds}, timeout=10) for _ in range(count)))
    elapsed = loop.time() - started
    assert results == [seconds] * count
    assert elapsed < 1.5, f"{count} calls of {seconds} s took {elapsed:.2f} s: they did not overlap"
    assert elapsed >= seconds


async def test_one_plugin_blocked_does_not_delay_another(tmp_path: Path) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo", "timer"])
    async with Supervisor(plugins, log_dir=tmp_path / "logs") as sup:
        slow = asyncio.create_task(sup.call("echo", "asleep", {"seconds": 5.0}, timeout=10))
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await sup.call("timer", "ping", timeout=5) == "pong"
        assert loop.time() - started < 0.5
        assert not slow.done()
        slow.cancel()


def test_helpers_write_a_valid_manifest(tmp_path: Path) -> None:
    """make_plugin overrides runtime keys instead of repeating them (TOML forbids that)."""
    folder = make_plugin(tmp_path, "itp_check", {"__init__.py": ""}, entry="x:Y", enabled=False, max_queue=3)
    data = tomllib.loads((folder / "plugin.toml").read_text())
    assert data["plugin"] == {"id": "itp_check", "name": "itp_check", "version": "0.1.0", "entry": "x:Y"}
    assert data["plugin_runtime"]["enabled"] is False
    assert data["plugin_runtime"]["max_queue"] == 3


async def test_a_timeout_reaches_the_caller_even_if_cancelling_in_the_worker_fails(tmp_path: Path) -> None:
    """The deadline answers the caller first, then asks the worker to cancel: a failure
    in the second step (here a bug injected into the real handle's abandon) must not
    leave the caller waiting. The worker itself is real and keeps serving."""
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["echo"])
    async with Supervisor(plugins, log_dir=False) as sup:
        handle = sup._slot("echo")._handle
        assert handle is not None
        real_abandon = handle.abandon
        failures: list[int] = []

        def failing_abandon(call_id: int, grace: float) -> None:
            failures.append(call_id)
            raise RuntimeError("injected: cannot ask the worker to cancel")

        handle.abandon = failing_abandon  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        try:
            with pytest.raises(CallTimeout):
                async with asyncio.timeout(10):  # the bug this guards against would hang here
                    await sup.call("echo", "asleep", {"seconds": 1.5}, timeout=0.2)
        finally:
            handle.abandon = real_abandon  # type: ignore[method-assign]
            loop.set_exception_handler(None)
        assert len(failures) == 1
        assert any("injected" in str(context.get("exception")) for context in errors)  # reported, not swallowed
        assert await sup.call("echo", "echo", {"value": "still serving"}) == "still serving"
