"""The plugin SDK: the only module plugin code imports.

    from worker.sdk import NekoPluginBase, neko_plugin, plugin_entry, lifecycle, timer_interval, Ok, Err, SdkError

Decorators only *mark* functions and classes (an attribute holding a frozen
spec); the worker's loader reads the marks. So the decorators stack in any
order with others that use `functools.wraps` (tenacity's `@retry` included):
`wraps` copies `__dict__`, and we also look through `__wrapped__`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

ENTRY_MARK = "__neko_entry__"
LIFECYCLE_MARK = "__neko_lifecycle__"
TIMER_MARK = "__neko_timer__"
PLUGIN_MARK = "__neko_plugin__"

LIFECYCLE_EVENTS = frozenset({"startup", "shutdown"})

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


class SdkError(Exception):
    """The SDK was used wrongly (a bad decorator argument, a duplicate entry id, ...)."""


@dataclass(frozen=True, slots=True)
class EntrySpec:
    id: str | None
    name: str | None
    description: str
    input_schema: Any
    timeout: float | None


@dataclass(frozen=True, slots=True)
class LifecycleSpec:
    event: str


@dataclass(frozen=True, slots=True)
class TimerSpec:
    id: str | None
    seconds: float


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a plugin is given at construction. `config_path` is its `plugin.toml`."""

    plugin_id: str
    config_path: Path
    logger: logging.Logger

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


@dataclass(frozen=True, slots=True)
class Ok:
    """An explicit successful result: the caller receives `value`."""

    value: Any = None


@dataclass(frozen=True, slots=True)
class Err:
    """An explicit failed result: the caller gets `EntryFailed` with this type and message.

    `Err("no such key")`, `Err(KeyError("k"))` or `Err("busy", type="Busy")`.
    """

    error: str | BaseException
    type: str | None = None

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
