"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright,
against `neko-supervisor serve` running real plugins on 127.0.0.1.

Skipped, with the reason, only where no Chromium is installed (`.ci/run` installs
Debian's `chromium`; set NEKO_CHROMIUM to use another binary). A screenshot of
the main view is saved in test-artifacts/ (or $NEKO_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import FAULT_PLUGINS, ROOT, copy_plugins
from tests.integration.helpers import make_plugin

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
expect = playwright_api.expect

pytestmark = pytest.mark.timeout(90)

TOKEN = "browser-token-" + "z" * 24
ARTIFACTS = Path(os.environ.get("NEKO_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# As root, in a machine without a display or a network: no sandbox (root), no GPU, and none of
# Chromium's own connections to Google, which a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
NO_VALUE = "\u2013"  # what the table shows for "none" (an en dash)
WAIT_MS = 15_000  # the longest any expectation waits: a loaded CI machine, never a fixed pause
expect.set_options(timeout=WAIT_MS)

FORMS = """
    import logging

    from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry

    SCHEMA = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "Where"},
            "days": {"type": "integer", "default": 2},
            "metric": {"type": "boolean", "default": True},
            "unit": {"enum": ["C", "F"], "default": "F"},
        },
        "required": ["city"],
    }
    MARKUP = '<img src=x onerror="document.title=1"><b id=injected>bold</b>'

    @neko_plugin
    class Forms(NekoPluginBase):
        @plugin_entry(id="forecast", description="A form from a declared schema. " + MARKUP, input_schema=SCHEMA)
        def forecast(self, city, days=2, metric=True, unit="F", **_):
            logging.getLogger("forms").warning("forecast for %s " + MARKUP, city)
            return {"city": city, "days": days, "metric": metric, "unit": unit, "note": MARKUP}
"""


def chromium_path() -> str | None:
    return os.environ.get("NEKO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)


def _read_lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


CHATTY = """
    import logging

    from worker.sdk import NekoPluginBase, neko_plugin, timer_interval

    @neko_plugin
    class Chatty(NekoPluginBase):
        count = 0

        @timer_interval(id="tick", seconds=0.02)
        def tick(self):
            self.count += 1
            logging.getLogger("chatty").warning("tick %d", self.count)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`neko-supervisor serve` as an operator starts it, with echo, crash, forms and chatty."""
    root = tmp_path_factory.mktemp("dashboard")
    plugins = copy_plugins(FAULT_PLUGINS, root / "plugins", ["echo", "crash"])
    make_plugin(plugins, "forms", {"__init__.py": FORMS}, entry="forms:Forms", max_restart=3)  # a typo, on purpose
    make_plugin(plugins, "chatty", {"__init__.py": CHATTY}, entry="chatty:Chatty")
    with open(root / "serve.stderr", "w") as stderr:  # the child keeps its own copy
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "serve", str(plugins), "--port", "0", "--no-access-log"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env={**os.environ, "NEKO_SUPERVISOR_TOKEN": TOKEN},
        )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while not seen or seen[-1] != "neko-supervisor: ready":
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            process.kill()
            pytest.fail(f"serve was not ready within 30 s: {seen}")
        if line is None:
            pytest.fail(f"serve exited before it was ready: {seen} {(root / 'serve.stderr').read_text()}")
        seen.append(line)
    match = re.search(r"on (http://\S+) ", seen[0])
    assert match, seen
    workers = psutil.Process(process.pid).children()
    yield Served(process, match.group(1), seen)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    reader.join(timeout=10)  # it ends at the EOF of the exited process's stdout
    assert process.stdout is not None
    process.stdout.close()
    assert code == 0, (root / "serve.stderr").read_text()
    assert not [worker for worker in workers if worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (Debian) or set NEKO_CHROMIUM to its path")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Page:
    page: Any
    problems: list[str]  # console errors and uncaught exceptions, as the browser reported them

    def unexpected(self, *allowed_statuses: int) -> list[str]:
        """Problems other than the browser's note on an HTTP error status the test provoked."""
        allowed = tuple(f"status of {status} " for status in allowed_statuses)
        return [text for text in self.problems if not (text.startswith("Failed to load resource") and any(a in text for a in allowed))]


@pytest.fixture
def open_page(browser: Any, served: Served) -> Iterator[Callable[..., Page]]:
    """`open_page(**context_options)`: the dashboard in a new browser context (closed after the test)."""
    contexts: list[Any] = []

    def open_(blocked: str | None = None, **context_options: Any) -> Page:
        context = browser.new_context(**context_options)
        contexts.append(context)
        context.set_default_timeout(WAIT_MS)
        if blocked is not None:  # as a proxy that cuts this path would ("!" before it: one that holds it)
            if blocked.startswith("!"):
                context.route(blocked[1:], lambda route: None)  # never answered
            else:
                context.route(blocked, lambda route: route.abort())
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
        page.goto(served.url + "/")
        return Page(page, problems)

    yield open_
    for context in contexts:
        context.close()


def sign_in(page: Any, token: str = TOKEN) -> None:
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")


def row(page: Any, plugin: str) -> Any:
    return page.locator(f'tr[data-plugin="{plugin}"]')


def cell(page: Any, plugin: str, column: str) -> Any:
    return row(page, plugin).locator(f'td[data-col="{column}"]')


def test_see_every_plugin_crash_one_restart_one_and_read_its_log(open_page: Callable[..., Page]) -> None:
    view = open_page(viewport={"width": 1280, "height": 900})
    page = view.page
    sign_in(page)
    for plugin in ("echo", "crash", "forms", "chatty"):
        expect(cell(page, plugin, "state")).to_have_text("running")
    expect(page.locator("#connection")).to_have_text("live")
    assert page.evaluate("sessionStorage.getItem('neko-supervisor-token')") == TOKEN
    assert TOKEN not in page.url

    # Crash it through its entry's form (built from the signature: `code`, default 3).
    restarts = int(cell(page, "crash", "restarts").inner_text())
    row(page, "crash").click()
    form = page.locator('.entry[data-entry="crash"]')
    expect(form.locator("input[name=code]")).to_have_value("3")
    form.locator("button[type=submit]").click()
    expect(form.locator(".outcome.failed")).to_contain_text("502 WorkerCrashed")
    expect(cell(page, "crash", "restarts")).to_have_text(str(restarts + 1))  # live: no reload
    expect(cell(page, "crash", "state")).to_have_text("running")
    expect(row(page, "crash")).to_contain_text("exited with code 3")

    # Restart it with its button: a new worker.
    pid_before = cell(page, "crash", "pid").inner_text()
    page.click('#detail button[data-action="restart"]')
    expect(page.locator("#action-result")).to_contain_text("restart: running (pid")
    expect(cell(page, "crash", "pid")).not_to_have_text(pid_before)
    assert cell(page, "crash", "pid").inner_text().isdigit()

    # Its log tail, live: the crash and both new workers.
    log = page.locator("#log")
    expect(log).to_contain_text("exited with code 3 (crashed)")
    new_pid = cell(page, "crash", "pid").inner_text()
    expect(log).to_contain_text(f"worker {new_pid} started")

    # The chart has the calls and the restarts.
    expect(page.locator("#chart")).to_have_attribute("data-restarts", re.compile(r"[1-9]"))
    expect(page.locator("#chart polyline.mean")).to_have_count(1)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)
    assert view.unexpected(502) == []


def test_a_form_from_a_declared_schema_calls_the_entry_and_shows_markup_as_text(open_page: Callable[..., Page]) -> None:
    view = open_page()
    page = view.page
    sign_in(page)
    row(page, "forms").click()
    expect(page.locator("#detail-warnings")).to_contain_text("max_restart")  # its plugin.toml's typo, named
    expect(page.locator("#detail-confinement")).to_contain_text("sandbox: not requested")
    form = page.locator('.entry[data-entry="forecast"]')
    expect(form).to_contain_text('<b id=injected>bold</b>')  # the description, as text
    expect(form.locator("input[name=days]")).to_have_value("2")
    expect(form.locator("input[name=metric]")).to_be_checked()
    form.locator("button[type=submit]").click()
    expect(form.locator(".outcome.failed")).to_contain_text("city is required")  # checked before sending
    form.locator("input[name=city]").fill("Kyoto")
    form.locator("input[name=days]").fill("5")
    form.locator("input[name=metric]").uncheck()
    form.locator("select[name=unit]").select_option(label="C")
    form.locator("button[type=submit]").click()
    outcome = form.locator(".outcome.ok")
    expect(outcome).to_contain_text('"city": "Kyoto"')
    expect(outcome).to_contain_text('"days": 5')
    expect(outcome).to_contain_text('"metric": false')
    expect(outcome).to_contain_text('"unit": "C"')
    expect(page.locator("#log")).to_contain_text("forecast for Kyoto <img src=x")
    # Markup from the plugin stayed text: no element was made from it, no handler ran.
    expect(page.locator("#injected")).to_have_count(0)
    assert page.title() == "neko-supervisor"
    assert view.unexpected() == []


def test_a_wrong_token_shows_an_error_and_no_data(open_page: Callable[..., Page]) -> None:
    view = open_page()
    page = view.page
    sign_in(page, "not-the-token-" + "q" * 20)
    expect(page.locator("#login-error")).to_contain_text("refused this token")
    expect(page.locator("#overview")).to_be_hidden()
    expect(page.locator("tbody tr")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('neko-supervisor-token')") is None
    assert view.unexpected(401) == []
    # The right one then works, in the same tab.
    sign_in(page)
    expect(cell(page, "echo", "state")).to_have_text("running")


def test_it_fits_a_phone_in_the_dark_theme(open_page: Callable[..., Page]) -> None:
    view = open_page(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True)
    page = view.page
    sign_in(page)
    expect(cell(page, "echo", "state")).to_have_text("running")
    row(page, "echo").click()
    expect(page.locator('.entry[data-entry="echo"]')).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 3 * 60, f"not a dark background: {background}"
    for column in ("name", "state", "restarts", "calls", "failures"):
        expect(cell(page, "echo", column)).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-phone-dark.png", full_page=True)
    assert view.unexpected() == []


def test_stop_and_start_buttons_with_the_summary_and_the_filter(open_page: Callable[..., Page]) -> None:
    view = open_page()
    page = view.page
    sign_in(page)
    expect(page.locator("#summary")).to_have_text("4 plugins: 4 running")
    page.fill("#filter", "ECH")  # id, name or state, case ignored
    expect(page.locator("tbody tr:visible")).to_have_count(1)
    expect(row(page, "echo")).to_be_visible()
    row(page, "echo").click()
    page.click('#detail button[data-action="stop"]')
    expect(page.locator("#action-result")).to_have_text("stop: stopped")
    expect(cell(page, "echo", "state")).to_have_text("stopped")
    expect(page.locator("#summary")).to_have_text("4 plugins: 3 running 1 stopped")
    page.fill("#filter", "stopped")
    expect(page.locator("tbody tr:visible")).to_have_count(1)
    page.fill("#filter", "")
    expect(page.locator("tbody tr:visible")).to_have_count(4)
    expect(cell(page, "echo", "pid")).to_have_text(NO_VALUE)
    expect(page.locator("#detail-state")).to_have_text("stopped")
    page.click('#detail button[data-action="start"]')
    expect(page.locator("#action-result")).to_contain_text("start: running (pid")
    expect(cell(page, "echo", "state")).to_have_text("running")
    form = page.locator('.entry[data-entry="echo"]')
    form.locator("textarea[name=value], input[name=value]").fill('"after a stop and a start"')
    form.locator("button[type=submit]").click()
    expect(form.locator(".outcome.ok")).to_contain_text("after a stop and a start")
    assert view.unexpected() == []


@pytest.mark.parametrize("blocked", ["**/v1/events", "!**/v1/events"], ids=["cut", "held"])
def test_without_the_event_stream_the_page_polls_and_still_shows_a_crash(open_page: Callable[..., Page], blocked: str) -> None:
    view = open_page(blocked=blocked)
    page = view.page
    sign_in(page)
    expect(page.locator("#connection")).to_have_text("polling")
    expect(cell(page, "crash", "state")).to_have_text("running")
    restarts = int(cell(page, "crash", "restarts").inner_text())
    row(page, "crash").click()
    form = page.locator('.entry[data-entry="crash_async"]')
    form.locator("button[type=submit]").click()
    expect(form.locator(".outcome.failed")).to_contain_text("WorkerCrashed")
    expect(cell(page, "crash", "restarts")).to_have_text(str(restarts + 1))
    # Only the blocked stream's own failures, reported by the browser, and the provoked 502.
    assert [text for text in view.unexpected(502) if "ERR_FAILED" not in text] == []


def test_a_chatty_log_is_followed_live_without_flooding_the_service(open_page: Callable[..., Page]) -> None:
    view = open_page()
    page = view.page
    log_requests: list[str] = []
    page.on("request", lambda request: log_requests.append(request.url) if "/logs" in request.url else None)
    sign_in(page)
    row(page, "chatty").click()
    expect(page.locator("#log")).to_contain_text("tick")
    seen = max(int(number) for number in re.findall(r"tick (\d+)", page.locator("#log").inner_text()))
    asked = len(log_requests)
    expect(page.locator("#log")).to_contain_text(f"tick {seen + 60}\n")  # >= 1.2 s of new lines, appended live
    # At most one request per snapshot (4 a second), not one per answer: a tight loop made ~25 a second.
    assert len(log_requests) - asked <= 15, log_requests
    assert all("after=" in url for url in log_requests[asked:])
    text = page.locator("#log").inner_text()
    numbers = [int(number) for number in re.findall(r"tick (\d+)", text)]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))  # in order, none twice
    assert view.unexpected() == []


def test_sign_out_forgets_the_token_and_the_theme_button_sticks(open_page: Callable[..., Page]) -> None:
    view = open_page(color_scheme="light")
    page = view.page
    sign_in(page)
    expect(cell(page, "echo", "state")).to_have_text("running")
    page.click("#theme")
    expect(page.locator("#theme")).to_have_text("Theme: dark")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.reload()  # the same tab: the token and the theme are still there
    expect(cell(page, "echo", "state")).to_have_text("running")
    expect(page.locator("#theme")).to_have_text("Theme: dark")
    page.click("#sign-out")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('neko-supervisor-token')") is None
    page.reload()
    expect(page.locator("#login")).to_be_visible()  # nothing left to sign in with
    assert view.unexpected() == []
