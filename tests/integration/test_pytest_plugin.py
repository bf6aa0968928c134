"""The pytest plugin (supervisor.pytest_plugin), run the way a user runs it.

Each inner test file runs in its own pytest subprocess (`pytester.runpytest_subprocess`),
which finds the plugin through the installed `pytest11` entry point, as a user's run
does; nothing here registers it by hand. The inner runs work on copies of the
checkout's plugins, made in the pytester folder. The last tests use the fixtures
directly: this suite's own run has the plugin too.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from supervisor import CallTimeout, FakeClock, PluginUnavailable, WorkerCrashed
from supervisor.pytest_plugin import SupervisorFactory, wait_for_restart
from tests.conftest import FAULT_PLUGINS, PLUGINS, ROOT, copy_plugins, pid_alive

pytest_plugins = ["pytester"]

INNER_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 30
"""

INNER_HEADER = """
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PLUGINS = HERE / "plugins"
FAULTS = HERE / "faults"
"""

# What import_error's copy may take: ten restarts with their backoff (0.05 s doubling
# to 2 s) are 11.15 s or more of waiting by the clock, against 60 s of window.
IMPORT_ERROR_RESTARTS = 10
IMPORT_ERROR_BACKOFF = 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2 + 2 + 2 + 2


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester folder with the inner runs' settings and copies of the plugins they use."""
    pytester.makeini(INNER_INI)
    copy_plugins(PLUGINS, pytester.path / "plugins", ["persistent"])
    faults = copy_plugins(FAULT_PLUGINS, pytester.path / "faults", ["import_error"])
    manifest = faults / "import_error" / "plugin.toml"
    text = manifest.read_text()
    assert "max_restarts = 2\n" in text
    manifest.write_text(text.replace("max_restarts = 2\n", f"max_restarts = {IMPORT_ERROR_RESTARTS}\n"))
    return pytester


def run_inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER_HEADER + source)
    return pytester.runpytest_subprocess(*args, timeout=60)


def test_registered_through_the_entry_point(inner: pytest.Pytester) -> None:
    listed = inner.runpytest_subprocess("--fixtures", timeout=60)
    text = listed.stdout.str()
    assert "fixtures defined from supervisor.pytest_plugin" in text
    assert re.search(r"^neko_supervisor -- ", text, re.MULTILINE)
    assert re.search(r"^neko_clock -- ", text, re.MULTILINE)

    source = """
def test_the_plugin_is_the_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("neko_supervisor")
    assert plugin is not None and plugin.__name__ == "supervisor.pytest_plugin"


def test_uses_the_fixture(neko_supervisor):
    assert callable(neko_supervisor)
"""
    result = run_inner(inner, source)
    result.assert_outcomes(passed=2)

    disabled = inner.runpytest_subprocess("-p", "no:neko_supervisor", timeout=60)
    disabled.assert_outcomes(failed=1, errors=1)
    disabled.stdout.fnmatch_lines(["*fixture 'neko_supervisor' not found*"])


def test_a_run_that_does_not_use_it_is_unchanged(inner: pytest.Pytester) -> None:
    source = """
def test_plain(tmp_path):
    assert "NEKO_SUPERVISOR_PYTEST_RUN" not in os.environ
"""
    inner.makepyfile(test_inner=INNER_HEADER + source)
    with_plugin = inner.runpytest_subprocess("--setup-show", "-rA", timeout=60)
    without = inner.runpytest_subprocess("--setup-show", "-rA", "-p", "no:neko_supervisor", timeout=60)
    with_plugin.assert_outcomes(passed=1)
    without.assert_outcomes(passed=1)

    def comparable(result: pytest.RunResult) -> list[str]:
        # pytest's header lists every installed plugin; the last line carries the time.
        return [line for line in result.outlines[:-1] if not line.startswith("plugins:")]

    assert comparable(with_plugin) == comparable(without)
    assert "neko" not in "\n".join(comparable(with_plugin))
    assert "neko-supervisor" in with_plugin.stdout.str()  # the header, and only the header


def test_a_plugins_folder_and_one_plugin(inner: pytest.Pytester) -> None:
    source = """
async def test_plugins_folder(neko_supervisor, tmp_path):
    async with neko_supervisor(PLUGINS) as sup:
        assert await sup.call("persistent", "save", {"key": "a", "value": "b"}, timeout=10) == {"saved": True}
        assert await sup.call("persistent", "load", {"key": "a"}, timeout=10) == {"key": "a", "value": "b"}
        assert Path(sup.status("persistent").folder) == PLUGINS / "persistent"
        assert Path(sup.status("persistent").log_path).is_relative_to(tmp_path)


async def test_one_plugin_is_copied(neko_supervisor, tmp_path):
    source = PLUGINS / "persistent"
    before = sorted(path.name for path in source.iterdir())
    async with neko_supervisor(source) as sup:
        assert sup.plugin_ids == ["persistent"]
        assert await sup.call("persistent", "save", {"key": "a", "value": "b"}, timeout=10) == {"saved": True}
        folder = Path(sup.status("persistent").folder)
    assert folder.is_relative_to(tmp_path) and folder.name == "persistent"
    assert (folder / "data.db").exists()
    assert sorted(path.name for path in source.iterdir()) == before
"""
    result = run_inner(inner, source)
    result.assert_outcomes(passed=2)


def test_a_process_left_behind_fails_the_test(inner: pytest.Pytester) -> None:
    # The orphan is what a worker's grandchild looks like once its worker has died:
    # the worker's tag and this test's id in its environment, reparented away from
    # the test process. The zombie is a child the test never reaped.
    source = """
from supervisor.process import TAG_VARIABLE

ORPHAN = (
    "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
    " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
)
ZOMBIES = []


async def test_leaves_an_orphan(neko_supervisor):
    async with neko_supervisor(PLUGINS) as sup:
        assert await sup.call("persistent", "keys", timeout=10) == {"keys": []}
    middle = subprocess.run([sys.executable, "-c", ORPHAN], env={**os.environ, TAG_VARIABLE: "stray"},
                            capture_output=True, text=True, check=True)
    (HERE / "orphan.pid").write_text(middle.stdout.strip())


def test_leaves_a_zombie(neko_supervisor):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ZOMBIES.append(child)  # keep the Popen: it must not reap the child when collected
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    (HERE / "zombie.pid").write_text(str(child.pid))
"""
    result = run_inner(inner, source)
    result.assert_outcomes(passed=2, errors=2)
    orphan = int((inner.path / "orphan.pid").read_text())
    zombie = int((inner.path / "zombie.pid").read_text())
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaves_an_orphan*",
        "neko_supervisor: 1 process(es) left behind by the test, killed now:",
        f"*pid {orphan} *: */python* -c import time; time.sleep(60)",
        "*ERROR at teardown of test_leaves_a_zombie*",
        f"*pid {zombie} zombie (an unreaped child of the test process): *",
    ])
    assert not pid_alive(orphan)


def test_forgetting_async_with_fails_the_test(inner: pytest.Pytester) -> None:
    # pytest-asyncio closes a test's own loop before the fixture's teardown: the
    # fixture can only kill the workers. A module loop is still open: it stops them.
    source = """
async def test_forgets(neko_supervisor):
    sup = neko_supervisor(PLUGINS)
    await sup.start()
    assert await sup.call("persistent", "keys", timeout=10) == {"keys": []}
    (HERE / "worker.pid").write_text(str(sup.status("persistent").pid))


@pytest.mark.asyncio(loop_scope="module")
async def test_forgets_on_a_module_loop(neko_supervisor):
    sup = neko_supervisor(PLUGINS)
    await sup.start()
    (HERE / "module_worker.pid").write_text(str(sup.status("persistent").pid))
    (HERE / "module_worker.log").write_text(sup.status("persistent").log_path)
"""
    result = run_inner(inner, source, "-W", "error")
    result.assert_outcomes(passed=2, errors=2)  # and no warning from the stranded supervisor's remains
    worker = int((inner.path / "worker.pid").read_text())
    module_worker = int((inner.path / "module_worker.pid").read_text())
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_forgets *",
        "neko_supervisor: the supervisor on * was started but never stopped"
        " (use it as `async with neko_supervisor(...) as sup:`);"
        " its event loop is closed, so the fixture could not stop it.",
        "1 process(es) left behind by the test, killed now:",
        f"  pid {worker} *-m worker *persistent*",
        "*ERROR at teardown of test_forgets_on_a_module_loop*",
        "neko_supervisor: the supervisor on * was started but never stopped (*); the fixture stopped it on its event loop.",
    ])
    assert not pid_alive(worker) and not pid_alive(module_worker)
    log = Path((inner.path / "module_worker.log").read_text()).read_text()
    assert f"worker {module_worker} exited with code 0 (stopped)" in log  # a graceful stop, not a kill


def test_a_fake_clock_spends_the_restart_budget_without_waiting(inner: pytest.Pytester) -> None:
    source = f"""
async def test_budget(neko_supervisor, neko_clock):
    started = time.monotonic()
    async with neko_supervisor(FAULTS / "import_error", clock=neko_clock) as sup:
        assert await sup.wait_for_state("import_error", "failed", timeout=20) == "failed"
        status = sup.status("import_error")
    took = time.monotonic() - started
    print(f"wall {{took:.2f}} s, clock {{neko_clock():.2f}} s")
    assert status.restarts == {IMPORT_ERROR_RESTARTS}
    assert "this_module_does_not_exist_xyz" in status.error
    assert neko_clock() >= {IMPORT_ERROR_BACKOFF}
    assert took < neko_clock() / 2
"""
    started = time.monotonic()
    result = run_inner(inner, source, "-s")
    took = time.monotonic() - started
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*wall * s, clock * s*"])
    assert took < IMPORT_ERROR_BACKOFF, f"the inner run took {took:.1f} s: it waited for the backoff"


# -- the helpers, used directly by this suite -------------------------------------------


async def test_wait_for_restart_after_a_crash(neko_supervisor: SupervisorFactory, tmp_path: Path) -> None:
    plugins = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["crash"])
    async with neko_supervisor(plugins) as sup:
        before = sup.status("crash")
        with pytest.raises(WorkerCrashed):
            await sup.call("crash", "crash", timeout=10)
        status = await wait_for_restart(sup, "crash", after=before.restarts)
        assert status.state == "running" and status.restarts == before.restarts + 1
        assert status.pid is not None and status.pid != before.pid
        assert await sup.call("crash", "ping", timeout=10) == "pong"
        with pytest.raises(TimeoutError, match=r"has 1 restarts and is 'running' after 0\.2 s"):
            await wait_for_restart(sup, "crash", after=1, timeout=0.2)


async def test_wait_for_restart_gives_up_on_a_failed_plugin(
    neko_supervisor: SupervisorFactory, neko_clock: FakeClock, tmp_path: Path
) -> None:
    plugin = copy_plugins(FAULT_PLUGINS, tmp_path / "plugins", ["import_error"]) / "import_error"
    async with neko_supervisor(plugin, clock=neko_clock) as sup:
        with pytest.raises(PluginUnavailable, match="failed after 2 restarts while waiting for restart 6"):
            await wait_for_restart(sup, "import_error", after=5)
        assert sup.status("import_error").state == "failed"
    assert neko_clock() > 0


async def test_runtime_rewrites_the_copy_of_one_plugin(neko_supervisor: SupervisorFactory, tmp_path: Path) -> None:
    source = copy_plugins(FAULT_PLUGINS, tmp_path / "source", ["echo"]) / "echo"
    original = (source / "plugin.toml").read_text()
    async with neko_supervisor(source, runtime={"call_timeout": 0.3, "max_restarts": 40}) as sup:
        started = time.monotonic()
        with pytest.raises(CallTimeout, match=r"after 0\.3 s"):
            await sup.call("echo", "asleep", {"seconds": 5})  # no timeout given: the rewritten call_timeout
        assert time.monotonic() - started < 2
    assert (source / "plugin.toml").read_text() == original  # only the copy changed
    with pytest.raises(ValueError, match="does not know: max_restart"):
        neko_supervisor(source, runtime={"max_restart": 40})
    with pytest.raises(ValueError, match="give the plugin's folder"):
        neko_supervisor(source.parent, runtime={"max_restarts": 40})


def test_the_readmes_example_runs_as_written(inner: pytest.Pytester) -> None:
    """The example of "Testing your plugin under faults", copied out of README.md unchanged."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing your plugin under faults", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "neko_supervisor" in example and "kill_next_call" in example
    inner.makepyfile(test_persistent_faults=example)  # it names "plugins/persistent", relative to the run's folder
    result = inner.runpytest_subprocess(timeout=60)
    result.assert_outcomes(passed=2)
