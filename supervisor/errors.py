"""Everything `Supervisor` raises. All importable from `supervisor`.

    PluginError
     +-- PluginNotFound          no plugin with that id was discovered (also a LookupError)
     +-- EntryNotFound           the plugin has no such entry (also a LookupError)
     +-- InvalidArguments        arguments do not fit the entry, or cannot be encoded (also a ValueError)
     +-- EntryFailed             the entry raised, or returned Err(...): remote type, message, traceback
     |    +-- ResultNotSerializable   the entry's value cannot be sent back (names the type)
     +-- CallTimeout             the call's deadline passed (also a TimeoutError)
     +-- WorkerCrashed           the worker died under the call: exit code or signal, stderr tail
     +-- PluginUnavailable       stopped, disabled, failed to load, or restart budget spent
     +-- PluginOverloaded        the plugin's call queue is full
     +-- ManifestError           plugin.toml is unreadable or invalid: names file and key
     +-- ProtocolError           the worker broke the protocol (also protocol.ProtocolError)

"We stopped it" (`PluginUnavailable`) and "it broke under us" (`WorkerCrashed`)
are different errors: only the second means a call may have half-run.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import protocol


class PluginError(Exception):
    """Base of every error the supervisor raises."""


class PluginNotFound(PluginError, LookupError):
    def __init__(self, plugin_id: str, known: list[str] | None = None) -> None:
        self.plugin_id = plugin_id
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"no plugin {plugin_id!r}{hint}")


class EntryNotFound(PluginError, LookupError):
    def __init__(self, plugin_id: str, entry_id: str, known: list[str] | None = None) -> None:
        self.plugin_id = plugin_id
        self.entry_id = entry_id
        hint = f" (entries: {', '.join(sorted(known))})" if known is not None else ""
        super().__init__(f"plugin {plugin_id!r} has no entry {entry_id!r}{hint}")


class InvalidArguments(PluginError, ValueError):
    pass


class EntryFailed(PluginError):
    """The entry raised. `str()` reads `Type: message`; `.traceback` is the remote one."""

    def __init__(self, type_name: str, message: str, traceback: str = "", *, plugin_id: str = "", entry_id: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.plugin_id = plugin_id
        self.entry_id = entry_id
        super().__init__(f"{type_name}: {message}" if message else type_name)


class ResultNotSerializable(EntryFailed):
    pass


class CallTimeout(PluginError, TimeoutError):
    def __init__(self, plugin_id: str, entry_id: str, timeout: float) -> None:
        self.plugin_id = plugin_id
        self.entry_id = entry_id
        self.timeout = timeout
        super().__init__(f"call {plugin_id}.{entry_id} timed out after {timeout:g} s")


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How one worker process ended."""

    pid: int
    returncode: int | None  # None while unknown
    reason: str = ""        # why we think it died: "crashed", "killed after call timeout", "stopped", ...

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    @property
    def exit_code(self) -> int | None:
        return self.returncode if self.returncode is not None and self.returncode >= 0 else None

    def describe(self) -> str:
        if self.returncode is None:
            how = "exit status unknown"
        elif self.signal is not None:
            try:
                how = f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                how = f"killed by signal {self.signal}"
        else:
            how = f"exited with code {self.returncode}"
        return f"worker {self.pid} {how}" + (f" ({self.reason})" if self.reason else "")


class WorkerCrashed(PluginError):
    def __init__(self, plugin_id: str, exit: ExitInfo | None, stderr_tail: list[str] | None = None, detail: str = "") -> None:
        self.plugin_id = plugin_id
        self.exit = exit
        self.stderr_tail = list(stderr_tail or [])
        what = exit.describe() if exit is not None else "worker died"
        text = f"plugin {plugin_id!r}: {what}"
        if detail:
            text += f": {detail}"
        excerpt = stderr_excerpt(self.stderr_tail)
        if excerpt:
            text += "\n  stderr: " + "\n  stderr: ".join(excerpt)
        super().__init__(text)

    @property
    def returncode(self) -> int | None:
        return self.exit.returncode if self.exit else None

    @property
    def signal(self) -> int | None:
        return self.exit.signal if self.exit else None


def stderr_excerpt(lines: list[str], limit: int = 12) -> list[str]:
    """The informative part of a dying worker's stderr: from the last traceback or
    fatal-error header if there is one (that is where the fault is named), else the end."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(("Fatal Python error", "Traceback (most recent call last)")):
            return lines[index : index + limit]
    return lines[-limit:]


class PluginUnavailable(PluginError):
    def __init__(self, plugin_id: str, reason: str) -> None:
        self.plugin_id = plugin_id
        self.reason = reason
        super().__init__(f"plugin {plugin_id!r} is unavailable: {reason}")


class PluginOverloaded(PluginError):
    def __init__(self, plugin_id: str, max_queue: int) -> None:
        self.plugin_id = plugin_id
        self.max_queue = max_queue
        super().__init__(f"plugin {plugin_id!r} is overloaded: {max_queue} calls already wait in its queue")


class ManifestError(PluginError, ValueError):
    """A bad plugin.toml. `.path` is the file, `.key` the dotted key at fault (or None)."""

    def __init__(self, path: str, key: str | None, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: key {key}: " if key else f"{path}: "
        super().__init__(where + message)


class ProtocolError(PluginError, protocol.ProtocolError):
    """The worker broke the protocol; also a `protocol.ProtocolError`."""
