"""The plugin SDK marks functions; the loader finds the marks through wrappers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tenacity

from worker.loader import collect_parts, is_async_callable
from worker.sdk import (
    ENTRY_MARK,
    LIFECYCLE_MARK,
    PLUGIN_MARK,
    TIMER_MARK,
    EntrySpec,
    Err,
    LifecycleSpec,
    NekoPluginBase,
    Ok,
    PluginContext,
    SdkError,
    TimerSpec,
    find_mark,
    lifecycle,
    neko_plugin,
    plugin_entry,
    timer_interval,
)

RETRY = tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none(), reraise=True)


def passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator in the usual style: functools.wraps (copies __dict__, sets __wrapped__)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def wrapped_only(func: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper that does not copy __dict__: only __wrapped__ leads to the mark."""

    @functools.wraps(func, updated=())
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


# --- plugin_entry ---------------------------------------------------------------------------


def test_bare_plugin_entry_marks_and_returns_the_function() -> None:
    def greet() -> str:
        return "hi"

    assert plugin_entry(greet) is greet
    spec = find_mark(greet, ENTRY_MARK)
    assert spec == EntrySpec(id=None, name=None, description="", input_schema=None, timeout=None)


def test_plugin_entry_with_empty_parentheses() -> None:
    @plugin_entry()
    def greet() -> str:
        return "hi"

    assert find_mark(greet, ENTRY_MARK).id is None


def test_plugin_entry_with_arguments() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}

    @plugin_entry(id="say_hi", name="Say hi", description="greets", input_schema=schema, timeout=5)
    def greet(name: str) -> str:
        return f"hi {name}"

    spec = find_mark(greet, ENTRY_MARK)
    assert spec == EntrySpec(id="say_hi", name="Say hi", description="greets", input_schema=schema, timeout=5.0)
    assert isinstance(spec.timeout, float)
    assert greet("x") == "hi x"


@pytest.mark.parametrize("bad_id", ["", 5, b"id"], ids=repr)
def test_plugin_entry_rejects_a_bad_id(bad_id: Any) -> None:
    with pytest.raises(SdkError, match="id"):
        plugin_entry(id=bad_id)


@pytest.mark.parametrize("timeout", [0, -1, -0.5, True, "5", float("nan")], ids=repr)
def test_plugin_entry_rejects_a_bad_timeout(timeout: Any) -> None:
    with pytest.raises(SdkError, match="timeout"):
        plugin_entry(timeout=timeout)


def test_plugin_entry_rejects_a_non_callable() -> None:
    with pytest.raises(SdkError):
        plugin_entry()(42)  # type: ignore[type-var]


# --- lifecycle, timers, the class mark ---------------------------------------------------------


@pytest.mark.parametrize("event", ["startup", "shutdown"])
def test_lifecycle_marks(event: str) -> None:
    @lifecycle(id=event)
    def hook() -> None:
        pass

    assert find_mark(hook, LIFECYCLE_MARK) == LifecycleSpec(event)


@pytest.mark.parametrize("event", ["boot", "", "Startup", "stop"])
def test_lifecycle_rejects_an_unknown_event(event: str) -> None:
    with pytest.raises(SdkError):
        lifecycle(id=event)


def test_timer_interval_marks() -> None:
    @timer_interval(id="tick", seconds=2)
    def tick() -> None:
        pass

    spec = find_mark(tick, TIMER_MARK)
    assert spec == TimerSpec("tick", 2.0)
    assert isinstance(spec.seconds, float)
    assert find_mark(timer_interval(seconds=0.5)(lambda: None), TIMER_MARK) == TimerSpec(None, 0.5)


@pytest.mark.parametrize("seconds", [0, -1, True, "1", None, float("nan")], ids=repr)
def test_timer_interval_rejects_bad_seconds(seconds: Any) -> None:
    with pytest.raises(SdkError, match="seconds"):
        timer_interval(seconds=seconds)


def test_neko_plugin_marks_a_class_only() -> None:
    @neko_plugin
    class Marked(NekoPluginBase):
        pass

    assert Marked.__dict__[PLUGIN_MARK] is True
    with pytest.raises(SdkError):
        neko_plugin(lambda: None)  # type: ignore[type-var]


# --- Ok / Err ------------------------------------------------------------------------------------


def test_err_from_a_string() -> None:
    err = Err("no such key")
    assert (err.type_name, err.message) == ("Err", "no such key")


def test_err_from_an_exception() -> None:
    assert (Err(ValueError("bad value")).type_name, Err(ValueError("bad value")).message) == ("ValueError", "bad value")
    assert Err(KeyError("k")).type_name == "KeyError"
    assert Err(KeyError("k")).message == str(KeyError("k"))


def test_err_with_an_explicit_type() -> None:
    assert Err("busy", type="Busy").type_name == "Busy"
    assert Err(ValueError("x"), type="Custom").type_name == "Custom"


def test_ok_carries_a_value() -> None:
    assert Ok(3).value == 3
    assert Ok().value is None


# --- find_mark through wrappers -----------------------------------------------------------------


def _sync_entry() -> str:
    return "sync"


async def _async_entry() -> str:
    return "async"


def _fresh(func: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object with the same code, so marks do not leak between tests."""

    @functools.wraps(func, assigned=("__name__", "__qualname__", "__doc__"), updated=())
    async def afresh(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    @functools.wraps(func, assigned=("__name__", "__qualname__", "__doc__"), updated=())
    def fresh(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return afresh if is_async_callable(func) else fresh


WRAPPERS = {"functools.wraps": passthrough, "wraps-without-dict": wrapped_only, "tenacity.retry": RETRY}


@pytest.mark.parametrize("base", [_sync_entry, _async_entry], ids=["sync", "async"])
@pytest.mark.parametrize("wrap", list(WRAPPERS.values()), ids=list(WRAPPERS))
def test_find_mark_sees_a_mark_under_a_wrapper(base: Callable[..., Any], wrap: Callable[..., Any]) -> None:
    func = _fresh(base)
    outer = wrap(plugin_entry(id="inner")(func))
    assert find_mark(outer, ENTRY_MARK).id == "inner"


@pytest.mark.parametrize("base", [_sync_entry, _async_entry], ids=["sync", "async"])
@pytest.mark.parametrize("wrap", list(WRAPPERS.values()), ids=list(WRAPPERS))
def test_find_mark_sees_a_mark_over_a_wrapper(base: Callable[..., Any], wrap: Callable[..., Any]) -> None:
    outer = plugin_entry(id="outer")(wrap(_fresh(base)))
    assert find_mark(outer, ENTRY_MARK).id == "outer"


def test_find_mark_through_several_wrappers() -> None:
    func = wrapped_only(wrapped_only(RETRY(wrapped_only(timer_interval(seconds=1)(_fresh(_sync_entry))))))
    assert find_mark(func, TIMER_MARK) == TimerSpec(None, 1.0)
    assert find_mark(func, ENTRY_MARK) is None


def test_find_mark_on_an_unmarked_function_is_none() -> None:
    assert find_mark(_sync_entry, ENTRY_MARK) is None
    assert find_mark(None, ENTRY_MARK) is None


class Runaway(Exception):
    pass


class WrapsItself:
    """An object whose __wrapped__ is itself; counts hops so a test cannot hang."""

    def __init__(self) -> None:
        self.hops = 0

    @property
    def __wrapped__(self) -> WrapsItself:
        self.hops += 1
        if self.hops > 1000:
            raise Runaway("followed __wrapped__ 1000 times")
        return self


def test_find_mark_stops_on_a_wrapped_cycle() -> None:
    assert find_mark(WrapsItself(), ENTRY_MARK) is None


def test_is_async_callable_stops_on_a_wrapped_cycle() -> None:
    # The loader calls is_async_callable() on every marked function; a
    # __wrapped__ cycle must not hang it any more than it may hang find_mark().
    assert is_async_callable(WrapsItself()) is False


# --- is_async_callable --------------------------------------------------------------------------


def test_is_async_callable_plain() -> None:
    assert is_async_callable(_async_entry) is True
    assert is_async_callable(_sync_entry) is False


def test_is_async_callable_under_tenacity_retry() -> None:
    assert is_async_callable(RETRY(_fresh(_async_entry))) is True
    assert is_async_callable(RETRY(_fresh(_sync_entry))) is False


def test_is_async_callable_under_a_sync_wrapper_of_an_async_function() -> None:
    # a plain functools.wraps wrapper hides the coroutine function; __wrapped__ finds it
    assert is_async_callable(wrapped_only(_async_entry)) is True


# --- the loader reads the marks -----------------------------------------------------------------


class Sample(NekoPluginBase):
    @plugin_entry
    def greet(self, name: str) -> str:
        return f"hi {name}"

    @plugin_entry(id="fetch", timeout=2)
    @RETRY
    async def fetch_with_retry(self) -> str:
        return "data"

    @RETRY
    @plugin_entry(description="retried")
    def flaky(self) -> str:
        return "ok"

    @lifecycle(id="startup")
    def boot(self) -> None:
        pass

    @timer_interval(seconds=1)
    def tick(self) -> None:
        pass


def test_collect_parts_uses_the_function_name_when_id_is_none(tmp_path: Path) -> None:
    ctx = PluginContext("sample", tmp_path / "plugin.toml", logging.getLogger("test.sample"))
    parts = collect_parts(Sample(ctx))
    assert set(parts.entries) == {"greet", "fetch", "flaky"}
    assert parts.entries["greet"].name == "greet"
    assert parts.entries["greet"].is_async is False
    assert parts.entries["fetch"].is_async is True
    assert parts.entries["fetch"].timeout == 2.0
    assert parts.entries["flaky"].description == "retried"
    assert parts.entries["greet"].func("x") == "hi x"
    assert len(parts.startup) == 1
    assert [timer.id for timer in parts.timers] == ["tick"]
