"""The plugin SDK: the only module plugin code imports.

    from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry, lifecycle, timer_interval, Ok, Err, SdkError

Decorators only *mark* functions and classes (an attribute holding a frozen
spec); the worker's loader reads the marks. The specs, `PluginContext`, `Ok`
and `Err` are frozen records (`protocol.record`: frozen, slotted dataclasses
without the cost of building their methods at every worker's start). So the decorators stack in any
order with others that use `functools.wraps` (tenacity's `@retry` included):
`wraps` copies `__dict__`, and we also look through `__wrapped__`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

from protocol.record import Record

ENTRY_MARK = "__neko_entry__"
LIFECYCLE_MARK = "__neko_lifecycle__"
TIMER_MARK = "__neko_timer__"
PLUGIN_MARK = "__neko_plugin__"

LIFECYCLE_EVENTS = frozenset({"startup", "shutdown"})

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


class SdkError(Exception):
    """The SDK was used wrongly (a bad decorator argument, a duplicate entry id, ...)."""


_set = object.__setattr__  # how a frozen record's __init__ fills its slots


class EntrySpec(Record):
    __slots__ = ("id", "name", "description", "input_schema", "timeout")
    id: str | None
    name: str | None
    description: str
    input_schema: Any
    timeout: float | None

    def __init__(self, id: str | None, name: str | None, description: str, input_schema: Any, timeout: float | None) -> None:
        _set(self, "id", id)
        _set(self, "name", name)
        _set(self, "description", description)
        _set(self, "input_schema", input_schema)
        _set(self, "timeout", timeout)


class LifecycleSpec(Record):
    __slots__ = ("event",)
    event: str

    def __init__(self, event: str) -> None:
        _set(self, "event", event)


class TimerSpec(Record):
    __slots__ = ("id", "seconds")
    id: str | None
    seconds: float

    def __init__(self, id: str | None, seconds: float) -> None:
        _set(self, "id", id)
        _set(self, "seconds", seconds)


class PluginContext(Record):
    """What a plugin is given at construction. `config_path` is its `plugin.toml`."""

    __slots__ = ("plugin_id", "config_path", "logger")
    plugin_id: str
    config_path: Path
    logger: logging.Logger

    def __init__(self, plugin_id: str, config_path: Path, logger: logging.Logger) -> None:
        _set(self, "plugin_id", plugin_id)
        _set(self, "config_path", config_path)
        _set(self, "logger", logger)

    @property
    def plugin_dir(self) -> Path:
        return self.config_path.parent


class NekoPluginBase:
    """Base class of every plugin. Subclasses call `super().__init__(ctx)`."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.logger = ctx.logger

    @property
    def plugin_id(self) -> str:
        return self.ctx.plugin_id


class Ok(Record):
    """An explicit successful result: the caller receives `value`."""

    __slots__ = ("value",)
    value: Any

    def __init__(self, value: Any = None) -> None:
        _set(self, "value", value)


class Err(Record):
    """An explicit failed result: the caller gets `EntryFailed` with this type and message.

    `Err("no such key")`, `Err(KeyError("k"))` or `Err("busy", type="Busy")`.
    """

    __slots__ = ("error", "type")
    error: str | BaseException
    type: str | None

    def __init__(self, error: str | BaseException, type: str | None = None) -> None:
        _set(self, "error", error)
        _set(self, "type", type)

    @property
    def type_name(self) -> str:
        if self.type:
            return self.type
        if isinstance(self.error, BaseException):
            return type(self.error).__name__
        return "Err"

    @property
    def message(self) -> str:
        return str(self.error)


def neko_plugin(cls: C) -> C:
    """Mark the plugin class (used when `plugin.toml` has no `entry`)."""
    if not isinstance(cls, type):
        raise SdkError(f"@neko_plugin decorates a class, not {type(cls).__name__}")
    setattr(cls, PLUGIN_MARK, True)
    return cls


@overload
def plugin_entry(fn: F, /) -> F: ...
@overload
def plugin_entry(
    fn: None = None,
    /,
    *,
    id: str | None = None,
    name: str | None = None,
    description: str = "",
    input_schema: Any = None,
    timeout: float | None = None,
) -> Callable[[F], F]: ...
def plugin_entry(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    id: str | None = None,
    name: str | None = None,
    description: str = "",
    input_schema: Any = None,
    timeout: float | None = None,
) -> Any:
    """Expose a method as an entry. Works bare (`@plugin_entry`) or with arguments;
    `id` defaults to the function's name; `timeout` (seconds) overrides the
    manifest's `call_timeout` for this entry."""
    if id is not None and (not isinstance(id, str) or not id):
        raise SdkError(f"plugin_entry id must be a non-empty string, got {id!r}")
    if timeout is not None and not _positive_finite(timeout):
        raise SdkError(f"plugin_entry timeout must be a positive number of seconds, got {timeout!r}")
    spec = EntrySpec(id, name, description or "", input_schema, None if timeout is None else float(timeout))

    def mark(func: F) -> F:
        if not callable(func):
            raise SdkError(f"@plugin_entry decorates a function, not {type(func).__name__}")
        setattr(func, ENTRY_MARK, spec)
        return func

    return mark if fn is None else mark(fn)


def lifecycle(*, id: str) -> Callable[[F], F]:
    """Run a method at `startup` (before the plugin is ready) or `shutdown`."""
    if id not in LIFECYCLE_EVENTS:
        raise SdkError(f"lifecycle id must be one of {sorted(LIFECYCLE_EVENTS)}, got {id!r}")

    def mark(func: F) -> F:
        setattr(func, LIFECYCLE_MARK, LifecycleSpec(id))
        return func

    return mark


def timer_interval(*, id: str | None = None, seconds: float) -> Callable[[F], F]:
    """Run a method every `seconds` on its own thread; ticks never overlap and an
    exception is logged without stopping the timer."""
    if not _positive_finite(seconds):
        raise SdkError(f"timer_interval seconds must be a positive number, got {seconds!r}")

    def mark(func: F) -> F:
        setattr(func, TIMER_MARK, TimerSpec(id, float(seconds)))
        return func

    return mark


def _positive_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


MAX_WRAP_DEPTH = 32  # a __wrapped__ cycle must not hang the loader


def unwrap_chain(func: Any) -> list[Any]:
    """`func` and everything it wraps through `__wrapped__`, at most MAX_WRAP_DEPTH deep."""
    chain: list[Any] = []
    while func is not None and len(chain) < MAX_WRAP_DEPTH:
        chain.append(func)
        func = getattr(func, "__wrapped__", None)
    return chain


def find_mark(func: Any, mark: str) -> Any:
    """The spec `mark` set on `func` or on anything it wraps (None if unmarked)."""
    for layer in unwrap_chain(func):
        spec = getattr(layer, mark, None)
        if spec is not None:
            return spec
    return None


__all__ = [
    "Err",
    "NekoPluginBase",
    "Ok",
    "PluginContext",
    "SdkError",
    "lifecycle",
    "neko_plugin",
    "plugin_entry",
    "timer_interval",
]
