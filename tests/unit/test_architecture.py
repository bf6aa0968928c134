"""The package arrows: `protocol` is a leaf; `worker` and `supervisor` meet only through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "protocol": {"worker", "supervisor"},
    "worker": {"supervisor"},
    "supervisor": {"worker"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found for {package}"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package]) for path in files
    }
    offenders = {path: bad for path, bad in offenders.items() if bad}
    assert not offenders, f"{package} must not import {sorted(FORBIDDEN[package])}: {offenders}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom supervisor.errors import PluginError\nimport worker.sdk\n")
    assert imported_packages(sample) == {"os", "supervisor", "worker"}


def test_only_the_ray_launcher_imports_ray() -> None:
    """Ray is an optional extra: the rest of the supervisor works without it."""
    allowed = {ROOT / "supervisor" / "launchers" / "ray.py", ROOT / "supervisor" / "launchers" / "relay.py"}
    importers = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "supervisor").rglob("*.py") if "ray" in imported_packages(path) and path not in allowed
    )
    assert not importers, f"only supervisor/launchers/ray.py and relay.py may import ray: {importers}"
