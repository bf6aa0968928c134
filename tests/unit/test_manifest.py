"""plugin.toml -> Manifest: defaults, type checks, and errors that name the file and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from supervisor.errors import ManifestError
from supervisor.manifest import Manifest, RuntimeOptions, discover, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"


def write(root: Path, folder: str, text: str) -> Path:
    path = root / folder / "plugin.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, folder: str = "demo") -> tuple[Path, ManifestError]:
    path = write(tmp_path, folder, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return path, info.value


def assert_names(error: ManifestError, path: Path, key: str | None) -> None:
    assert error.path == str(path)
    assert error.key == key
    assert str(path) in str(error)
    if key is not None:
        assert key in str(error)


def runtime(table: str) -> str:
    return f'[plugin]\nid = "demo"\n\n[plugin_runtime]\n{table}\n'


# --- defaults and full manifests ---------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "demo", "[plugin]\n")
    manifest = load_manifest(path)
    assert (manifest.id, manifest.name, manifest.version, manifest.description) == ("demo", "demo", "0.0.0", "")
    assert manifest.entry is None
    assert manifest.path == path
    assert manifest.folder == path.parent
    r = manifest.runtime
    assert r.enabled is True
    assert r.auto_start is True
    assert r.timeout == 10.0
    assert r.call_timeout == 30.0
    assert r.shutdown_timeout == 5.0
    assert r.max_concurrency == 32
    assert r.max_queue == 1024
    assert r.restart == "on-failure"
    assert r.max_restarts == 5
    assert r.restart_window == 60.0
    assert (r.memory_limit_mb, r.cpu_time_limit, r.max_open_files, r.max_processes) == (1024, 0.0, 1024, 64)
    assert (r.sandbox, r.network) == (None, False)
    # Where it runs: the supervisor's launcher; on Ray it asks for nothing, and is spread.
    assert (r.launcher, r.num_cpus, r.num_gpus, r.memory_mb, r.node_labels) == (None, 0.0, 0.0, 0, ())


def test_every_key_is_read(tmp_path: Path) -> None:
    text = """
[plugin]
id = "full-plugin_2"
name = "Full Plugin"
version = "1.2.3"
description = "all keys"
entry = "pkg.core:FullPlugin"

[plugin.author]          # N.E.K.O tables we do not read are left alone
name = "someone"

[plugin_runtime]
enabled = false
auto_start = false
timeout = 3
call_timeout = 1.5
shutdown_timeout = 0
max_concurrency = 4
max_queue = 0
restart = "always"
max_restarts = 0
restart_window = 10
memory_limit_mb = 256
some_future_key = "ignored"
"""
    manifest = parse_manifest(tmp_path / "folder" / "plugin.toml", text)
    assert (manifest.id, manifest.name, manifest.version, manifest.description, manifest.entry) == (
        "full-plugin_2",
        "Full Plugin",
        "1.2.3",
        "all keys",
        "pkg.core:FullPlugin",
    )
    r = manifest.runtime
    assert (r.enabled, r.auto_start) == (False, False)
    assert (r.timeout, r.call_timeout, r.shutdown_timeout, r.restart_window) == (3.0, 1.5, 0.0, 10.0)
    assert all(isinstance(v, float) for v in (r.timeout, r.call_timeout, r.shutdown_timeout, r.restart_window))
    assert (r.max_concurrency, r.max_queue, r.restart, r.max_restarts, r.memory_limit_mb) == (4, 0, "always", 0, 256)


@pytest.mark.parametrize("policy", ["always", "on-failure", "never"])
def test_every_restart_policy_is_accepted(tmp_path: Path, policy: str) -> None:
    manifest = parse_manifest(tmp_path / "demo" / "plugin.toml", runtime(f'restart = "{policy}"'))
    assert manifest.runtime.restart == policy


def test_limits_of_zero_mean_none(tmp_path: Path) -> None:
    text = runtime("memory_limit_mb = 0\ncpu_time_limit = 0\nmax_open_files = 0\nmax_processes = 0")
    r = parse_manifest(tmp_path / "demo" / "plugin.toml", text).runtime
    assert (r.memory_limit_mb, r.cpu_time_limit, r.max_open_files, r.max_processes) == (0, 0.0, 0, 0)


@pytest.mark.parametrize(("literal", "mode"), [("true", "on"), ("false", "off"), ('"required"', "required")])
def test_sandbox_modes(tmp_path: Path, literal: str, mode: str) -> None:
    manifest = parse_manifest(tmp_path / "demo" / "plugin.toml", runtime(f"sandbox = {literal}\nnetwork = true"))
    assert (manifest.runtime.sandbox, manifest.runtime.network) == (mode, True)


@pytest.mark.parametrize(("line", "key"), [
    ('sandbox = "yes"', "plugin_runtime.sandbox"),
    ("sandbox = 1", "plugin_runtime.sandbox"),
    ('network = "on"', "plugin_runtime.network"),
    ("max_open_files = 8", "plugin_runtime.max_open_files"),
    ("memory_limit_mb = 8", "plugin_runtime.memory_limit_mb"),
    ("max_processes = -1", "plugin_runtime.max_processes"),
    ("cpu_time_limit = nan", "plugin_runtime.cpu_time_limit"),
])
def test_bad_safety_keys_name_file_and_key(tmp_path: Path, line: str, key: str) -> None:
    path, error = load_error(tmp_path, runtime(line))
    assert_names(error, path, key)


def test_id_defaults_to_the_folder_name(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, "my_plugin-2", '[plugin]\nname = "Mine"\n'))
    assert manifest.id == "my_plugin-2"
    assert manifest.name == "Mine"


def test_folder_name_that_is_not_a_valid_id_is_an_id_error(tmp_path: Path) -> None:
    path, error = load_error(tmp_path, "[plugin]\n", folder="has space")
    assert_names(error, path, "plugin.id")


# --- every runtime key is type-checked ------------------------------------------

WRONG_TYPES = [
    ("enabled", '"yes"'),
    ("enabled", "1"),
    ("auto_start", '"true"'),
    ("auto_start", "0"),
    ("timeout", '"10"'),
    ("timeout", "true"),
    ("call_timeout", '"30"'),
    ("call_timeout", "[30]"),
    ("shutdown_timeout", '"5"'),
    ("shutdown_timeout", "false"),
    ("max_concurrency", "true"),
    ("max_concurrency", "1.5"),
    ("max_concurrency", '"4"'),
    ("max_queue", "2.0"),
    ("max_queue", "false"),
    ("restart", "1"),
    ("restart", "true"),
    ("max_restarts", '"5"'),
    ("max_restarts", "true"),
    ("max_restarts", "5.0"),
    ("restart_window", '"60"'),
    ("restart_window", "true"),
    ("memory_limit_mb", '"256"'),
    ("memory_limit_mb", "true"),
    ("cpu_time_limit", '"60"'),
    ("cpu_time_limit", "true"),
    ("max_open_files", "64.0"),
    ("max_open_files", '"64"'),
    ("max_processes", "false"),
    ("max_processes", "8.5"),
    ("sandbox", "1"),
    ("sandbox", '"on"'),
    ("network", '"true"'),
    ("network", "1"),
    ("spare_worker", '"yes"'),
    ("spare_worker", "1"),
    ("launcher", "1"),
    ("launcher", "true"),
    ("num_cpus", '"1"'),
    ("num_cpus", "true"),
    ("num_gpus", '"1"'),
    ("num_gpus", "false"),
    ("memory_mb", "1.5"),
    ("memory_mb", '"512"'),
    ("node_labels", '"zone=a"'),
    ("node_labels", '["zone"]'),
]


@pytest.mark.parametrize(("key", "value"), WRONG_TYPES, ids=[f"{k}={v}" for k, v in WRONG_TYPES])
def test_wrong_type_names_file_and_key(tmp_path: Path, key: str, value: str) -> None:
    path, error = load_error(tmp_path, runtime(f"{key} = {value}"))
    assert_names(error, path, f"plugin_runtime.{key}")


def test_every_runtime_key_is_covered_by_the_type_checks() -> None:
    assert {key for key, _ in WRONG_TYPES} == set(RuntimeOptions.__dataclass_fields__)


OUT_OF_RANGE = [
    ("timeout", "0"),
    ("timeout", "-1"),
    ("call_timeout", "-0.5"),
    ("call_timeout", "0"),
    ("shutdown_timeout", "-1"),
    ("max_concurrency", "0"),
    ("max_concurrency", "-3"),
    ("max_queue", "-1"),
    ("max_restarts", "-1"),
    ("restart_window", "0"),
    ("memory_limit_mb", "-5"),
    ("num_cpus", "-1"),
    ("num_gpus", "-0.5"),
    ("memory_mb", "-1"),
]


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE, ids=[f"{k}={v}" for k, v in OUT_OF_RANGE])
def test_out_of_range_number_names_file_and_key(tmp_path: Path, key: str, value: str) -> None:
    path, error = load_error(tmp_path, runtime(f"{key} = {value}"))
    assert_names(error, path, f"plugin_runtime.{key}")
    assert value in str(error)


@pytest.mark.parametrize("key", ["timeout", "call_timeout", "shutdown_timeout", "restart_window"])
def test_nan_duration_is_rejected(tmp_path: Path, key: str) -> None:
    # TOML has `nan`; a NaN timeout compares false with everything, so it
    # passes a `< 0` check and then breaks every deadline computed from it.
    path, error = load_error(tmp_path, runtime(f"{key} = nan"))
    assert_names(error, path, f"plugin_runtime.{key}")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_memory_limit_is_a_manifest_error(tmp_path: Path, value: str) -> None:
    # int(nan) / int(inf) raise ValueError / OverflowError: they must not escape
    # as anything but ManifestError (discover() only catches ManifestError).
    path, error = load_error(tmp_path, runtime(f"memory_limit_mb = {value}"))
    assert_names(error, path, "plugin_runtime.memory_limit_mb")


def test_one_unloadable_manifest_does_not_stop_discovery(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    write(root, "good", "[plugin]\n")
    write(root, "odd", runtime("memory_limit_mb = inf"))
    found = {d.folder.name: d for d in discover(root)}
    assert found["good"].error is None
    assert isinstance(found["odd"].error, ManifestError)


def test_placement_keys_are_read(tmp_path: Path) -> None:
    text = runtime('launcher = "ray"\nnum_cpus = 0.5\nnum_gpus = 1\nmemory_mb = 2048\nnode_labels = { zone = "eu-1", gpu = "a100" }')
    r = parse_manifest(tmp_path / "p" / "plugin.toml", text).runtime
    assert (r.launcher, r.num_cpus, r.num_gpus, r.memory_mb) == ("ray", 0.5, 1.0, 2048)
    assert r.node_labels == (("gpu", "a100"), ("zone", "eu-1"))
    assert hash(r) is not None  # still a frozen, hashable record


def test_unknown_launcher_is_named(tmp_path: Path) -> None:
    path, error = load_error(tmp_path, runtime('launcher = "kubernetes"'))
    assert_names(error, path, "plugin_runtime.launcher")
    assert "'local', 'ray'" in str(error) and "kubernetes" in str(error)


@pytest.mark.parametrize("labels", ["{ zone = 3 }", '{ zone = "eu 1" }', '{ zone = "-eu" }', '{ "bad key" = "a" }', f'{{ zone = "{"a" * 64}" }}'])
def test_a_node_label_ray_would_refuse_is_named(tmp_path: Path, labels: str) -> None:
    path, error = load_error(tmp_path, runtime(f"node_labels = {labels}"))
    assert error.key is not None and error.key.startswith("plugin_runtime.node_labels.")
    assert_names(error, path, error.key)


def test_node_labels_in_ray_syntax_are_accepted(tmp_path: Path) -> None:
    text = runtime('node_labels = { "ray.io/accelerator-type" = "A100", zone = "eu-1", tier = "" }')
    labels = dict(parse_manifest(tmp_path / "p" / "plugin.toml", text).runtime.node_labels)
    assert labels == {"ray.io/accelerator-type": "A100", "zone": "eu-1", "tier": ""}


def test_unknown_restart_value_is_named(tmp_path: Path) -> None:
    path, error = load_error(tmp_path, runtime('restart = "sometimes"'))
    assert_names(error, path, "plugin_runtime.restart")
    assert "sometimes" in str(error)


def test_runtime_that_is_not_a_table(tmp_path: Path) -> None:
    # A top-level key must come before the first table header.
    path, error = load_error(tmp_path, 'plugin_runtime = 5\n[plugin]\nid = "demo"\n')
    assert_names(error, path, "plugin_runtime")


# --- the [plugin] table --------------------------------------------------------------


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path, error = load_error(tmp_path, '[plugin\nid = "demo"\n')
    assert_names(error, path, None)
    assert isinstance(error.__cause__, tomllib.TOMLDecodeError)


@pytest.mark.parametrize("text", ["", 'name = "no table"\n', 'plugin = "not a table"\n'], ids=["empty", "no-table", "string"])
def test_missing_plugin_table(tmp_path: Path, text: str) -> None:
    path, error = load_error(tmp_path, text)
    assert_names(error, path, "plugin")


@pytest.mark.parametrize(
    "plugin_id",
    ["has space", "dot.ted", "slash/ed", "", "semi;colon", "new\\nline", "trailing\\n"],
    ids=repr,
)
def test_bad_id_characters(tmp_path: Path, plugin_id: str) -> None:
    path, error = load_error(tmp_path, f'[plugin]\nid = "{plugin_id}"\n')
    assert_names(error, path, "plugin.id")


@pytest.mark.parametrize(("key", "value"), [("id", "5"), ("name", "true"), ("version", "1.0"), ("description", "[]"), ("entry", "1")])
def test_plugin_keys_are_type_checked(tmp_path: Path, key: str, value: str) -> None:
    path, error = load_error(tmp_path, f"[plugin]\n{key} = {value}\n")
    assert_names(error, path, f"plugin.{key}")


@pytest.mark.parametrize("entry", ["nocolon", ":Class", "module:", ":", ""], ids=repr)
def test_bad_entry_format(tmp_path: Path, entry: str) -> None:
    path, error = load_error(tmp_path, f'[plugin]\nentry = "{entry}"\n')
    assert_names(error, path, "plugin.entry")


@pytest.mark.parametrize("entry", ["module:Class", "pkg.sub.module:Class", "plugin.plugins.demo:Demo"])
def test_good_entry_format(tmp_path: Path, entry: str) -> None:
    assert load_manifest(write(tmp_path, "demo", f'[plugin]\nentry = "{entry}"\n')).entry == entry


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "plugin.toml"
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert_names(info.value, path, None)


def test_non_utf8_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "plugin.toml"
    path.parent.mkdir()
    path.write_bytes(b'[plugin]\nname = "\xff\xfe"\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert_names(info.value, path, None)


def test_manifest_error_is_a_value_error() -> None:
    assert issubclass(ManifestError, ValueError)


# --- discovery ---------------------------------------------------------------------------


def test_discover_keeps_good_and_broken_plugins(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    write(root, "alpha", '[plugin]\nid = "alpha"\n')
    write(root, "broken", "[plugin\n")
    first = write(root, "dup_a", '[plugin]\nid = "same"\n')
    second = write(root, "dup_b", '[plugin]\nid = "same"\n')
    write(root, "zeta", "[plugin]\n")  # id from the folder
    (root / "not_a_plugin").mkdir()  # no plugin.toml: not a plugin
    (root / "stray.toml").write_text("[plugin]\n")

    found = discover(root)
    by_folder = {d.folder.name: d for d in found}
    assert list(by_folder) == ["alpha", "broken", "dup_a", "dup_b", "zeta"]

    for name, plugin_id in [("alpha", "alpha"), ("dup_a", "same"), ("zeta", "zeta")]:
        good = by_folder[name]
        assert good.error is None
        assert isinstance(good.manifest, Manifest)
        assert good.id == good.manifest.id == plugin_id

    broken = by_folder["broken"]
    assert broken.manifest is None
    assert isinstance(broken.error, ManifestError)
    assert_names(broken.error, root / "broken" / "plugin.toml", None)
    assert broken.id == "broken"

    dup = by_folder["dup_b"]
    assert dup.manifest is None
    assert isinstance(dup.error, ManifestError)
    assert_names(dup.error, second, "plugin.id")
    assert str(first) in str(dup.error)

    ids = [d.id for d in found]
    assert len(ids) == len(set(ids))


def test_discover_keeps_ids_unique_when_a_broken_folder_is_named_like_a_good_id(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    write(root, "broken", "not toml at all [")
    write(root, "good", '[plugin]\nid = "broken"\n')
    found = discover(root)
    assert len(found) == 2
    ids = [d.id for d in found]
    assert len(set(ids)) == 2
    good = next(d for d in found if d.manifest is not None)
    assert good.id == "broken"


def test_discover_of_an_empty_dir_finds_nothing(tmp_path: Path) -> None:
    assert discover(tmp_path) == []


def test_discover_of_a_missing_dir_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    with pytest.raises(ManifestError) as info:
        discover(missing)
    assert info.value.path == str(missing)


def test_discover_of_a_file_raises(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ManifestError):
        discover(file)


# --- the repository's own plugins ------------------------------------------------------------


@pytest.mark.parametrize("plugins_dir", [PLUGINS, PLUGINS / "faults"], ids=["seed", "faults"])
def test_repo_manifests_all_load(plugins_dir: Path) -> None:
    expected = sorted(path.parent.name for path in plugins_dir.glob("*/plugin.toml"))
    assert expected, f"no plugins under {plugins_dir}"
    found = discover(plugins_dir)
    errors = [str(d.error) for d in found if d.error is not None]
    assert errors == []
    assert sorted(d.folder.name for d in found) == expected


def test_a_misspelt_runtime_key_or_table_is_warned_about(tmp_path: Path) -> None:
    text = runtime("sandbx = true\nmemory_limit = 64") + "\n[plugin-runtime]\nsandbox = true\n"
    manifest = parse_manifest(tmp_path / "demo" / "plugin.toml", text)
    assert manifest.runtime.sandbox is None  # nothing was applied from the typos
    joined = "\n".join(manifest.warnings)
    assert "plugin_runtime.sandbx is ignored; did you mean 'sandbox'?" in joined
    assert "plugin_runtime.memory_limit is ignored; did you mean 'memory_limit_mb'?" in joined
    assert "[plugin-runtime] is ignored; did you mean [plugin_runtime]?" in joined
    assert str(tmp_path / "demo" / "plugin.toml") in joined


def test_foreign_tables_are_not_warned_about(tmp_path: Path) -> None:
    text = runtime("enabled = true") + '\n[plugin.author]\nname = "x"\n\n[plugin.sdk]\nversion = "1"\n'
    assert parse_manifest(tmp_path / "demo" / "plugin.toml", text).warnings == ()
