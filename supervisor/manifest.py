"""plugin.toml -> `Manifest`, with errors that name the file and the key.

    [plugin]                      # N.E.K.O keys
    id = "persistent"             # letters, digits, _ and - (default: the folder name)
    name = "Persistent"           # default: the id
    version = "0.1.0"
    description = "..."
    entry = "persistent:PersistentPlugin"   # optional; see worker/loader.py

    [plugin_runtime]              # N.E.K.O keys, then ours; defaults below
    enabled = true
    auto_start = true
    timeout = 10                  # seconds from spawn to handshake (N.E.K.O's meaning)
    call_timeout = 30
    shutdown_timeout = 5
    max_concurrency = 32          # calls in flight on the worker
    max_queue = 1024              # calls waiting behind them; past it PluginOverloaded
    restart = "on-failure"        # "always" | "on-failure" | "never"
    max_restarts = 5              # more crashes than this within restart_window -> failed
    restart_window = 60
    memory_limit_mb = 1024        # worker tree's resident memory; 0: no limit
    cpu_time_limit = 0            # CPU seconds for one worker life (its whole tree); 0: no limit
    max_open_files = 1024         # RLIMIT_NOFILE of the worker; 0: inherit the supervisor's
    max_processes = 64            # processes in the worker's tree, the worker included; 0: no limit
    sandbox = false               # true: Landlock (own folder only); "required": refuse to start without it
                                  # Supervisor(sandbox=...) is a floor: this can raise it, never lower it
    network = false               # with the sandbox: allow TCP connect and bind
    spare_worker = false          # true: keep one more worker started, short of loading the plugin,
                                  # so a restart skips the interpreter's start (one more idle process)
    launcher = "local"            # "local" | "ray"; default: the supervisor's launcher
    num_cpus = 0                  # on Ray: what the worker's node must have free (placement only)
    num_gpus = 0
    memory_mb = 0                 # on Ray: memory Ray reserves for it (placement; memory_limit_mb still limits it)
    node_labels = {}              # on Ray: only nodes with these labels, e.g. { zone = "eu-1" }

Unknown keys are kept out of the way (N.E.K.O manifests carry more tables, such
as [plugin.author] and [plugin.sdk]); keys we know are type-checked.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import ManifestError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib  # type: ignore[no-redef]

MANIFEST_NAME = "plugin.toml"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # used with fullmatch: no "$" that admits a trailing newline
ENTRY_PATTERN = re.compile(r"[A-Za-z_][\w.-]*:[A-Za-z_]\w*")  # "module.path:Class"
RESTART_POLICIES = ("always", "on-failure", "never")
LAUNCHERS = ("local", "ray")
# Ray's node labels follow Kubernetes' label syntax.
LABEL_VALUE_PATTERN = re.compile(r"(?:[A-Za-z0-9](?:[-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?)?")
LABEL_KEY_PATTERN = re.compile(r"(?:[a-z0-9](?:[-.a-z0-9]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?")
MIN_OPEN_FILES = 32  # the worker itself needs a few (pipes, epoll, the interpreter's own)
MIN_MEMORY_MB = 32   # an idle worker takes about 20 MB: less would kill it at every start


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    enabled: bool = True
    auto_start: bool = True
    timeout: float = 10.0
    call_timeout: float = 30.0
    shutdown_timeout: float = 5.0
    max_concurrency: int = 32
    max_queue: int = 1024
    restart: str = "on-failure"
    max_restarts: int = 5
    restart_window: float = 60.0
    memory_limit_mb: int = 1024
    cpu_time_limit: float = 0.0
    max_open_files: int = 1024
    max_processes: int = 64
    sandbox: str | None = None    # "off" | "on" | "required"; None: the supervisor's default
    network: bool = False
    spare_worker: bool = False
    launcher: str | None = None   # "local" | "ray"; None: the supervisor's own
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    memory_mb: int = 0
    node_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    name: str
    version: str
    description: str
    entry: str | None
    path: Path            # the plugin.toml
    runtime: RuntimeOptions
    warnings: tuple[str, ...] = ()  # keys we do not know that look like typos of ones we do

    @property
    def folder(self) -> Path:
        return self.path.parent


def _check(path: Path, table: dict[str, Any], prefix: str, key: str, kinds: tuple[type, ...], default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    # TOML booleans are Python bools, which are ints too: keep them apart.
    value_ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not value_ok:
        wanted = " or ".join(k.__name__ for k in kinds)
        raise ManifestError(str(path), f"{prefix}.{key}", f"must be {wanted}, got {type(value).__name__} {value!r}")
    return value


def _positive(path: Path, key: str, value: float, *, allow_zero: bool = False) -> float:
    if not math.isfinite(value):
        raise ManifestError(str(path), key, f"must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ManifestError(str(path), key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def parse_manifest(path: Path, text: str) -> Manifest:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(str(path), None, f"invalid TOML: {exc}") from exc

    plugin = data.get("plugin")
    if not isinstance(plugin, dict):
        raise ManifestError(str(path), "plugin", "missing [plugin] table")
    plugin_id = _check(path, plugin, "plugin", "id", (str,), path.parent.name)
    if not ID_PATTERN.fullmatch(plugin_id):
        raise ManifestError(str(path), "plugin.id", f"must use only letters, digits, '_' and '-', got {plugin_id!r}")
    entry = _check(path, plugin, "plugin", "entry", (str,), None)
    if entry is not None and not ENTRY_PATTERN.fullmatch(entry):
        raise ManifestError(str(path), "plugin.entry", f"must look like 'module:Class', got {entry!r}")

    runtime_table = data.get("plugin_runtime", {})
    if not isinstance(runtime_table, dict):
        raise ManifestError(str(path), "plugin_runtime", "must be a table")
    number = (int, float)

    def get(key: str, kinds: tuple[type, ...], default: Any) -> Any:
        return _check(path, runtime_table, "plugin_runtime", key, kinds, default)

    defaults = RuntimeOptions()
    restart = get("restart", (str,), defaults.restart)
    if restart not in RESTART_POLICIES:
        raise ManifestError(
            str(path), "plugin_runtime.restart", f"must be one of {', '.join(map(repr, RESTART_POLICIES))}, got {restart!r}"
        )
    sandbox = get("sandbox", (bool, str), None)
    if isinstance(sandbox, str) and sandbox != "required":
        raise ManifestError(str(path), "plugin_runtime.sandbox", f"must be true, false or \"required\", got {sandbox!r}")
    memory_limit_mb = int(_positive(path, "plugin_runtime.memory_limit_mb", get("memory_limit_mb", (int,), defaults.memory_limit_mb), allow_zero=True))
    if 0 < memory_limit_mb < MIN_MEMORY_MB:
        raise ManifestError(str(path), "plugin_runtime.memory_limit_mb", f"must be 0 (no limit) or at least {MIN_MEMORY_MB}, got {memory_limit_mb}")
    max_open_files = int(_positive(path, "plugin_runtime.max_open_files", get("max_open_files", (int,), defaults.max_open_files), allow_zero=True))
    if 0 < max_open_files < MIN_OPEN_FILES:
        raise ManifestError(str(path), "plugin_runtime.max_open_files", f"must be 0 or at least {MIN_OPEN_FILES}, got {max_open_files}")
    launcher = get("launcher", (str,), None)
    if launcher is not None and launcher not in LAUNCHERS:
        raise ManifestError(str(path), "plugin_runtime.launcher", f"must be one of {', '.join(map(repr, LAUNCHERS))}, got {launcher!r}")
    node_labels = get("node_labels", (dict,), {})
    for label, value in node_labels.items():
        where = f"plugin_runtime.node_labels.{label}"
        if not isinstance(value, str):
            raise ManifestError(str(path), where, f"must be a string, got {type(value).__name__} {value!r}")
        if not LABEL_KEY_PATTERN.fullmatch(label):
            raise ManifestError(str(path), where, "is not a node label name: letters, digits, '-', '_' and '.', at most 63, optionally after 'a.dns.prefix/'")
        if not LABEL_VALUE_PATTERN.fullmatch(value):
            raise ManifestError(str(path), where, f"must be a node label value (letters, digits, '-', '_' and '.', at most 63, starting and ending alphanumeric), got {value!r}")
    runtime = RuntimeOptions(
        enabled=get("enabled", (bool,), defaults.enabled),
        auto_start=get("auto_start", (bool,), defaults.auto_start),
        timeout=float(_positive(path, "plugin_runtime.timeout", get("timeout", number, defaults.timeout))),
        call_timeout=float(_positive(path, "plugin_runtime.call_timeout", get("call_timeout", number, defaults.call_timeout))),
        shutdown_timeout=float(
            _positive(path, "plugin_runtime.shutdown_timeout", get("shutdown_timeout", number, defaults.shutdown_timeout), allow_zero=True)
        ),
        max_concurrency=int(_positive(path, "plugin_runtime.max_concurrency", get("max_concurrency", (int,), defaults.max_concurrency))),
        max_queue=int(_positive(path, "plugin_runtime.max_queue", get("max_queue", (int,), defaults.max_queue), allow_zero=True)),
        restart=restart,
        max_restarts=int(_positive(path, "plugin_runtime.max_restarts", get("max_restarts", (int,), defaults.max_restarts), allow_zero=True)),
        restart_window=float(_positive(path, "plugin_runtime.restart_window", get("restart_window", number, defaults.restart_window))),
        memory_limit_mb=memory_limit_mb,
        cpu_time_limit=float(_positive(path, "plugin_runtime.cpu_time_limit", get("cpu_time_limit", number, defaults.cpu_time_limit), allow_zero=True)),
        max_open_files=max_open_files,
        max_processes=int(_positive(path, "plugin_runtime.max_processes", get("max_processes", (int,), defaults.max_processes), allow_zero=True)),
        sandbox=None if sandbox is None else "required" if sandbox == "required" else "on" if sandbox else "off",
        network=get("network", (bool,), defaults.network),
        spare_worker=get("spare_worker", (bool,), defaults.spare_worker),
        launcher=launcher,
        num_cpus=float(_positive(path, "plugin_runtime.num_cpus", get("num_cpus", number, defaults.num_cpus), allow_zero=True)),
        num_gpus=float(_positive(path, "plugin_runtime.num_gpus", get("num_gpus", number, defaults.num_gpus), allow_zero=True)),
        memory_mb=int(_positive(path, "plugin_runtime.memory_mb", get("memory_mb", (int,), defaults.memory_mb), allow_zero=True)),
        node_labels=tuple(sorted(node_labels.items())),
    )
    return Manifest(
        warnings=_typo_warnings(path, data, runtime_table),
        id=plugin_id,
        name=_check(path, plugin, "plugin", "name", (str,), plugin_id),
        version=_check(path, plugin, "plugin", "version", (str,), "0.0.0"),
        description=_check(path, plugin, "plugin", "description", (str,), ""),
        entry=entry,
        path=path,
        runtime=runtime,
    )


def _typo_warnings(path: Path, data: dict[str, Any], runtime_table: dict[str, Any]) -> tuple[str, ...]:
    """A misspelt safety key (`sandbx = true`) silently keeps the default: say so.
    Other unknown keys stay quiet: N.E.K.O manifests carry tables of their own."""
    found = []
    for key in runtime_table:
        if key not in RuntimeOptions.__dataclass_fields__:
            close = difflib.get_close_matches(key, list(RuntimeOptions.__dataclass_fields__), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            found.append(f"{path}: unknown key plugin_runtime.{key} is ignored{hint}")
    for table in data:
        if table not in ("plugin", "plugin_runtime") and difflib.get_close_matches(table, ["plugin_runtime"], n=1, cutoff=0.8):
            found.append(f"{path}: unknown table [{table}] is ignored; did you mean [plugin_runtime]?")
    return tuple(found)


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(str(path), None, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(str(path), None, f"not UTF-8: {exc}") from exc
    return parse_manifest(path, text)


@dataclass(frozen=True, slots=True)
class Discovered:
    """One plugin folder found by discovery: a manifest, or the error that stopped it."""

    id: str
    folder: Path
    manifest: Manifest | None
    error: ManifestError | None


def discover(plugins_dir: Path) -> list[Discovered]:
    """Every `plugins_dir/*/plugin.toml`, sorted by folder name.

    A bad manifest does not stop discovery: it is returned with its error, under
    the folder name (made unique) since its id may be unreadable. A duplicate id
    is an error on every folder after the first that claims it.
    """
    if not plugins_dir.exists():
        raise ManifestError(str(plugins_dir), None, "plugins directory does not exist")
    if not plugins_dir.is_dir():
        raise ManifestError(str(plugins_dir), None, "is not a directory (give the folder that holds the plugin folders)")
    loaded: list[tuple[Path, Manifest | ManifestError]] = []
    owners: dict[str, Path] = {}
    for path in sorted(plugins_dir.glob(f"*/{MANIFEST_NAME}")):
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            loaded.append((path, exc))
            continue
        if manifest.id in owners:
            first = owners[manifest.id] / MANIFEST_NAME
            loaded.append((path, ManifestError(str(path), "plugin.id", f"duplicate id {manifest.id!r}, already used by {first}")))
            continue
        owners[manifest.id] = path.parent
        loaded.append((path, manifest))

    taken = set(owners)
    found: list[Discovered] = []
    for path, outcome in loaded:
        if isinstance(outcome, Manifest):
            found.append(Discovered(outcome.id, path.parent, outcome, None))
            continue
        name = re.sub(r"[^A-Za-z0-9_-]", "_", path.parent.name) or "_"
        while name in taken:
            name += "_"
        taken.add(name)
        found.append(Discovered(name, path.parent, None, outcome))
    return found
