"""From a plugin folder to a plugin class and the callables it exposes.

The folder is imported as a package named after the folder, without putting
the plugins root on `sys.path` (a sibling plugin is not importable by name).
The class is, in order: the one `plugin.toml`'s `entry = "module:Class"` names;
else the class marked `@neko_plugin`; else the package's single
`NekoPluginBase` subclass.

The worker reads only the manifest keys it needs (`plugin.id`, `plugin.entry`,
`plugin_runtime.max_concurrency`); the supervisor validates the whole file.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from protocol.record import Record
from worker.schema import schema_from_signature
from worker.sdk import (
    ENTRY_MARK,
    LIFECYCLE_MARK,
    PLUGIN_MARK,
    TIMER_MARK,
    EntrySpec,
    NekoPluginBase,
    SdkError,
    TimerSpec,
    find_mark,
    unwrap_chain,
)

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_MAX_CONCURRENCY = 32


class LoadError(Exception):
    """The plugin folder cannot be turned into a plugin; the message names file and key."""


# Frozen records (protocol.record), not dataclasses: every worker builds these
# classes at start-up, and a dataclass compiles its methods each time.
_set = object.__setattr__


class WorkerConfig(Record):
    __slots__ = ("plugin_id", "config_path", "entry", "max_concurrency")
    plugin_id: str
    config_path: Path
    entry: str | None
    max_concurrency: int

    def __init__(self, plugin_id: str, config_path: Path, entry: str | None, max_concurrency: int) -> None:
        _set(self, "plugin_id", plugin_id)
        _set(self, "config_path", config_path)
        _set(self, "entry", entry)
        _set(self, "max_concurrency", max_concurrency)


class Entry(Record):
    __slots__ = ("id", "name", "description", "input_schema", "timeout", "func", "signature", "is_async", "required", "accepted")
    id: str
    name: str
    description: str
    input_schema: Any
    timeout: float | None
    func: Callable[..., Any]          # bound to the plugin instance
    signature: inspect.Signature
    is_async: bool
    # Precomputed from the signature so the common case checks arguments with
    # two set operations instead of Signature.bind (None: always use bind).
    required: frozenset[str] | None
    accepted: frozenset[str] | None  # None: any keyword (**kwargs)

    def __init__(
        self, id: str, name: str, description: str, input_schema: Any, timeout: float | None,
        func: Callable[..., Any], signature: inspect.Signature, is_async: bool,
        required: frozenset[str] | None = None, accepted: frozenset[str] | None = None,
    ) -> None:
        _set(self, "id", id)
        _set(self, "name", name)
        _set(self, "description", description)
        _set(self, "input_schema", input_schema)
        _set(self, "timeout", timeout)
        _set(self, "func", func)
        _set(self, "signature", signature)
        _set(self, "is_async", is_async)
        _set(self, "required", required)
        _set(self, "accepted", accepted)

    def arguments_fit(self, args: dict[str, Any]) -> bool:
        """True if `args` bind; a False answer is explained by `signature.bind`."""
        if self.required is None:
            try:
                self.signature.bind(**args)
            except TypeError:
                return False
            return True
        keys = args.keys()
        return self.required <= keys and (self.accepted is None or keys <= self.accepted)


class Timer(Record):
    __slots__ = ("id", "seconds", "func", "is_async")
    id: str
    seconds: float
    func: Callable[..., Any]
    is_async: bool

    def __init__(self, id: str, seconds: float, func: Callable[..., Any], is_async: bool) -> None:
        _set(self, "id", id)
        _set(self, "seconds", seconds)
        _set(self, "func", func)
        _set(self, "is_async", is_async)


class PluginParts(Record):
    __slots__ = ("entries", "startup", "shutdown", "timers")
    entries: dict[str, Entry]
    startup: tuple[Callable[..., Any], ...]
    shutdown: tuple[Callable[..., Any], ...]
    timers: tuple[Timer, ...]

    def __init__(
        self, entries: dict[str, Entry], startup: tuple[Callable[..., Any], ...],
        shutdown: tuple[Callable[..., Any], ...], timers: tuple[Timer, ...],
    ) -> None:
        _set(self, "entries", entries)
        _set(self, "startup", startup)
        _set(self, "shutdown", shutdown)
        _set(self, "timers", timers)


def read_config(plugin_dir: Path) -> WorkerConfig:
    path = plugin_dir / "plugin.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise LoadError(f"{path}: invalid TOML: {exc}") from exc
    plugin = data.get("plugin")
    if not isinstance(plugin, dict):
        raise LoadError(f"{path}: missing [plugin] table")
    plugin_id = plugin.get("id", plugin_dir.name)
    if not isinstance(plugin_id, str) or not plugin_id:
        raise LoadError(f"{path}: key plugin.id must be a non-empty string")
    entry = plugin.get("entry")
    if entry is not None and (not isinstance(entry, str) or ":" not in entry):
        raise LoadError(f"{path}: key plugin.entry must look like 'module:Class', got {entry!r}")
    runtime = data.get("plugin_runtime", {})
    concurrency = runtime.get("max_concurrency", DEFAULT_MAX_CONCURRENCY) if isinstance(runtime, dict) else DEFAULT_MAX_CONCURRENCY
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise LoadError(f"{path}: key plugin_runtime.max_concurrency must be a positive integer")
    return WorkerConfig(plugin_id, path, entry, concurrency)


def import_package(plugin_dir: Path) -> ModuleType:
    """Import the folder as a package named after it (works without `__init__.py` too)."""
    name = plugin_dir.name
    if not name.isidentifier():
        raise LoadError(f"{plugin_dir}: the folder name {name!r} is not a Python identifier; rename the folder")
    if name in sys.modules or name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        raise LoadError(
            f"{plugin_dir}: the folder name {name!r} would shadow the installed module {name!r}; rename the folder"
        )
    init = plugin_dir / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(plugin_dir)])
    else:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(plugin_dir)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def resolve_class(plugin_dir: Path, config: WorkerConfig, package: ModuleType) -> type[NekoPluginBase]:
    if config.entry is not None:
        return _class_from_entry(plugin_dir, config, package)
    return _class_by_search(plugin_dir, package)


def _class_from_entry(plugin_dir: Path, config: WorkerConfig, package: ModuleType) -> type[NekoPluginBase]:
    assert config.entry is not None
    module_path, _, class_name = config.entry.partition(":")
    parts = module_path.split(".")
    # "folder", "folder.core" and N.E.K.O's "plugin.plugins.folder[.core]" all name
    # the same package; a path without the folder is taken relative to it.
    if package.__name__ in parts:
        at = len(parts) - 1 - parts[::-1].index(package.__name__)
        relative = parts[at + 1 :]
    else:
        relative = parts
    module_name = ".".join([package.__name__, *relative])
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise LoadError(
                f"{config.config_path}: key plugin.entry names module {module_path!r}, which is not in {plugin_dir}"
            ) from exc
        raise
    cls = getattr(module, class_name, None)
    if cls is None:
        raise LoadError(f"{config.config_path}: key plugin.entry names class {class_name!r}, not found in {module_name}")
    if not (isinstance(cls, type) and issubclass(cls, NekoPluginBase)):
        raise LoadError(f"{config.config_path}: key plugin.entry: {class_name!r} is not a NekoPluginBase subclass")
    return cls


def _class_by_search(plugin_dir: Path, package: ModuleType) -> type[NekoPluginBase]:
    modules = [package]
    found = _plugin_classes(modules)
    if not any(found):
        # Nothing in __init__: look in the folder's top-level modules too.
        for path in sorted(plugin_dir.glob("*.py")):
            if path.stem != "__init__":
                modules.append(importlib.import_module(f"{package.__name__}.{path.stem}"))
        found = _plugin_classes(modules)
    marked, subclasses = found
    if len(marked) == 1:
        return marked[0]
    if len(marked) > 1:
        names = ", ".join(sorted(c.__qualname__ for c in marked))
        raise LoadError(f"{plugin_dir}: several classes are marked @neko_plugin ({names}); set plugin.entry")
    if len(subclasses) == 1:
        return subclasses[0]
    if subclasses:
        names = ", ".join(sorted(c.__qualname__ for c in subclasses))
        raise LoadError(f"{plugin_dir}: several NekoPluginBase subclasses ({names}); mark one @neko_plugin or set plugin.entry")
    raise LoadError(f"{plugin_dir}: no plugin class found (no plugin.entry, no @neko_plugin class, no NekoPluginBase subclass)")


def _plugin_classes(modules: list[ModuleType]) -> tuple[list[type], list[type]]:
    prefix = modules[0].__name__
    classes: dict[int, type] = {}
    for module in modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, NekoPluginBase)
                and value is not NekoPluginBase
                and (value.__module__ == prefix or value.__module__.startswith(prefix + "."))
            ):
                classes[id(value)] = value
    marked = [c for c in classes.values() if c.__dict__.get(PLUGIN_MARK)]
    return marked, list(classes.values())


def collect_parts(instance: NekoPluginBase) -> PluginParts:
    """Read the SDK marks off the instance's methods (subclass definitions win)."""
    entries: dict[str, Entry] = {}
    startup: list[Callable[..., Any]] = []
    shutdown: list[Callable[..., Any]] = []
    timers: list[Timer] = []
    seen: set[str] = set()
    for klass in type(instance).__mro__:
        for attr_name, raw in vars(klass).items():
            if attr_name in seen:
                continue
            seen.add(attr_name)
            func = raw.__func__ if isinstance(raw, staticmethod | classmethod) else raw
            if not callable(func):
                continue
            bound = getattr(instance, attr_name)
            entry_spec: EntrySpec | None = find_mark(func, ENTRY_MARK)
            if entry_spec is not None:
                entry = _make_entry(attr_name, entry_spec, bound, func)
                if entry.id in entries:
                    raise SdkError(f"two entries share the id {entry.id!r}")
                entries[entry.id] = entry
            life = find_mark(func, LIFECYCLE_MARK)
            if life is not None:
                (startup if life.event == "startup" else shutdown).append(bound)
            timer_spec: TimerSpec | None = find_mark(func, TIMER_MARK)
            if timer_spec is not None:
                timers.append(Timer(timer_spec.id or attr_name, timer_spec.seconds, bound, is_async_callable(func)))
    return PluginParts(entries, tuple(startup), tuple(shutdown), tuple(timers))


def _make_entry(attr_name: str, spec: EntrySpec, bound: Callable[..., Any], func: Any) -> Entry:
    try:
        signature = inspect.signature(bound)
    except (TypeError, ValueError) as exc:
        raise SdkError(f"entry {attr_name!r}: cannot read its signature: {exc}") from exc
    params = signature.parameters.values()
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    simple = all(p.kind is not inspect.Parameter.POSITIONAL_ONLY for p in params)
    required = frozenset(p.name for p in params if p.kind in keyword_kinds and p.default is inspect.Parameter.empty)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    accepted = None if takes_any else frozenset(p.name for p in params if p.kind in keyword_kinds)
    return Entry(
        id=spec.id or attr_name,
        name=spec.name or attr_name,
        description=spec.description,
        input_schema=spec.input_schema if spec.input_schema is not None else _derived_schema(signature),
        timeout=spec.timeout,
        func=bound,
        signature=signature,
        is_async=is_async_callable(func),
        required=required if simple else None,
        accepted=accepted if simple else None,
    )


def _derived_schema(signature: inspect.Signature) -> Any:
    # Documentation only: whatever a signature holds must never keep a plugin from starting.
    try:
        return schema_from_signature(signature)
    except Exception:
        return None


def is_async_callable(func: Any) -> bool:
    """True for `async def` functions, also when wrapped (tenacity's async retry is one)."""
    return any(inspect.iscoroutinefunction(layer) for layer in unwrap_chain(func))
