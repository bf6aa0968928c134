"""neko-supervisor: run N.E.K.O plugins in isolated worker processes.

    from supervisor import Supervisor, CallTimeout, WorkerCrashed
    async with Supervisor("plugins") as sup:
        value = await sup.call("persistent", "save", {"key": "a", "value": "b"}, timeout=5.0)
"""

# Names load on first use (PEP 562): importing the package, as pytest does for
# its plugin module supervisor.pytest_plugin in every run where this project is
# installed, must not pull in asyncio, psutil and msgpack for tests that never use it.
import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "supervisor.chaos": ("Direction", "Injection", "Phase", "PluginChaos"),
    "supervisor.errors": (
        "CallTimeout", "EntryFailed", "EntryNotFound", "ExitInfo", "InvalidArguments", "ManifestError", "PluginError",
        "PluginNotFound", "PluginOverloaded", "PluginUnavailable", "ProtocolError", "ResultNotSerializable", "WorkerCrashed",
    ),
    "supervisor.lifecycle": ("PluginState",),
    "supervisor.manifest": ("Manifest", "RuntimeOptions"),
    "supervisor.policy": ("FakeClock",),
    "supervisor.slot": ("PluginStatus",),
    "supervisor.supervisor": ("Supervisor",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])


if TYPE_CHECKING:
    from supervisor.chaos import Direction, Injection, Phase, PluginChaos
    from supervisor.errors import (
        CallTimeout,
        EntryFailed,
        EntryNotFound,
        ExitInfo,
        InvalidArguments,
        ManifestError,
        PluginError,
        PluginNotFound,
        PluginOverloaded,
        PluginUnavailable,
        ProtocolError,
        ResultNotSerializable,
        WorkerCrashed,
    )
    from supervisor.lifecycle import PluginState
    from supervisor.manifest import Manifest, RuntimeOptions
    from supervisor.policy import FakeClock
    from supervisor.slot import PluginStatus
    from supervisor.supervisor import Supervisor

__all__ = [
    "CallTimeout",
    "Direction",
    "EntryFailed",
    "EntryNotFound",
    "ExitInfo",
    "FakeClock",
    "Injection",
    "InvalidArguments",
    "Manifest",
    "ManifestError",
    "Phase",
    "PluginChaos",
    "PluginError",
    "PluginNotFound",
    "PluginOverloaded",
    "PluginState",
    "PluginStatus",
    "PluginUnavailable",
    "ProtocolError",
    "ResultNotSerializable",
    "RuntimeOptions",
    "Supervisor",
    "WorkerCrashed",
]
