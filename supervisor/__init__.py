"""neko-supervisor: run N.E.K.O plugins in isolated worker processes.

    from supervisor import Supervisor, CallTimeout, WorkerCrashed
    async with Supervisor("plugins") as sup:
        value = await sup.call("persistent", "save", {"key": "a", "value": "b"}, timeout=5.0)
"""

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
