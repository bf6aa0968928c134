"""Confine this process with Landlock: the plugin sees its own folder and what Python needs.

After `restrict(plugin_dir, network=...)` returns a report with `abi > 0`, the
calling process, every thread it starts later and every child it spawns later
can only:

    plugin_dir                      read, write, create, remove, rename, truncate (no execute)
    python_read_paths(...)          read and execute (interpreter, stdlib, site-packages,
                                    system libraries, time zones, /proc/<own pid>, ...)
    /dev/null                       read and write (subprocess.DEVNULL opens it O_RDWR)
    TCP bind and connect            denied unless network=True (ABI 4+)
    signals, abstract unix sockets  only within the sandbox (ABI 6+)

Everything else on the file system is denied (EACCES -> PermissionError).
Landlock does not cover UDP, unix sockets by path, or metadata (stat):
"network denied" means TCP only.
Landlock cannot be undone: the only way out is a new worker.

Invariants:
- No granted path is, contains, or lies inside the plugins root
  (`plugin_dir.parent`) or a sibling plugin folder (symlinks resolved). A
  candidate read path that contains the plugins root is replaced by its
  children, minus the way down to the root, recursively; the filesystem root
  itself is never expanded (it would grant the whole machine).
- Only the calling thread is confined (and what it creates later), so
  `restrict` refuses to run once a second thread exists.
- With no Landlock (old kernel, not Linux, or `NEKO_SUPERVISOR_LANDLOCK=off`)
  nothing is applied and the report says why (`abi == 0`).

The ABI grows by version. We handle every right that both this module and
the running kernel know, so nothing we know of is left allowed by accident
(a right from an ABI newer than 7 stays unhandled, i.e. allowed):

    ABI 1  files and directories (rename/link across directories always denied)
    ABI 2  + REFER (rename/link across directories, within granted trees)
    ABI 3  + TRUNCATE
    ABI 4  + TCP bind/connect
    ABI 5  + IOCTL_DEV
    ABI 6  + scoping of signals and abstract unix sockets
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import site
import stat
import sys
import sysconfig
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ENV_DISABLE = "NEKO_SUPERVISOR_LANDLOCK"  # "off": behave as if the kernel had no Landlock

# The same numbers on x86_64 and aarch64 (new syscalls share one table since 5.1).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13       # ABI 2
FS_TRUNCATE = 1 << 14    # ABI 3
FS_IOCTL_DEV = 1 << 15   # ABI 5
NET_BIND_TCP = 1 << 0    # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_FS_ABI_1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
# Every file-system right each ABI knows (ABI 4 and 6+ added none).
_FS_BY_ABI = {1: _FS_ABI_1, 2: _FS_ABI_1 | FS_REFER, 3: _FS_ABI_1 | FS_REFER | FS_TRUNCATE}
_FS_LATEST = _FS_BY_ABI[3] | FS_IOCTL_DEV
# The kernel rejects (EINVAL) a rule on a non-directory that carries directory rights.
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# No EXECUTE (what the plugin writes, it cannot exec) and no device nodes.
PLUGIN_RIGHTS = (
    FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | FS_TRUNCATE | FS_REMOVE_DIR | FS_REMOVE_FILE
    | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER
)
SINK_RIGHTS = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE  # open("/dev/null", "w") truncates

SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache")
TIME_ZONES = ("/usr/share/zoneinfo", "/usr/share/lib/zoneinfo", "/etc/zoneinfo", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/urandom", "/dev/zero")
# Not /etc/ssl or /etc/pki as a whole: /etc/ssl/private and /etc/pki/tls/private hold keys.
CA_PATHS = (
    "/etc/ssl/certs", "/etc/ssl/cert.pem", "/etc/ssl/openssl.cnf", "/etc/ca-certificates",
    "/usr/share/ca-certificates", "/usr/local/share/ca-certificates",
    "/etc/pki/ca-trust", "/etc/pki/tls/certs", "/etc/pki/tls/cert.pem", "/etc/pki/tls/openssl.cnf",
)
NAME_RESOLUTION = (
    "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf",
    "/etc/services", "/etc/protocols",
)

# O_PATH descriptors of /proc/<pid>, kept open for the life of the process. A
# Landlock rule holds the inode it was made from; procfs makes a fresh inode
# whenever /proc/<pid> is looked up again after its dentry was evicted, and a
# rule on the old inode would silently stop matching. An open descriptor pins
# the dentry, so the rule keeps applying.
_pinned_fds: list[int] = []


@dataclass(frozen=True, slots=True)
class SandboxReport:
    """What `restrict` enforced (not what was asked for)."""

    abi: int                 # 0: not applied
    filesystem: bool         # file-system rules enforced
    network: str             # "denied" | "allowed" | "unrestricted" (ABI < 4 cannot restrict TCP)
    signals_scoped: bool     # ABI 6+: cannot signal processes outside the sandbox
    reason: str = ""         # why not applied / what is missing

    def as_dict(self) -> dict[str, object]:
        return {
            "abi": self.abi,
            "filesystem": self.filesystem,
            "network": self.network,
            "signals_scoped": self.signals_scoped,
            "reason": self.reason,
        }


# --- the kernel interface ----------------------------------------------------


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),              # ABI 6
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)): 12 bytes, not 16
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _ruleset_attr_size(abi: int) -> int:
    """Exactly the fields this ABI defines (an older kernel tolerates extra bytes only if zero)."""
    return 8 if abi < 4 else 16 if abi < 6 else 24


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)  # a private handle: restype below is ours alone
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(libc: ctypes.CDLL, what: str, *args: object) -> int:
    result: int = libc.syscall(*args)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def abi_version() -> int:
    """The Landlock ABI the kernel offers; 0 when unavailable or disabled by `ENV_DISABLE=off`."""
    if os.environ.get(ENV_DISABLE) == "off" or not sys.platform.startswith("linux"):
        return 0
    try:
        libc = _libc()
        return _syscall(
            libc, "landlock_create_ruleset", ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
        )
    except (OSError, AttributeError):
        return 0  # ENOSYS: not built in; EOPNOTSUPP: built in but not enabled at boot


def _unavailable_reason() -> str:
    if os.environ.get(ENV_DISABLE) == "off":
        return f"Landlock disabled by {ENV_DISABLE}=off"
    if not sys.platform.startswith("linux"):
        return f"Landlock is Linux-only (platform {sys.platform})"
    return "the kernel offers no Landlock (too old, or not enabled at boot: lsm=...,landlock)"


def _handled_fs_rights(abi: int) -> int:
    """Every file-system right the given ABI knows."""
    if abi >= 5:
        return _FS_LATEST
    return _FS_BY_ABI[min(abi, 3)]


# --- which paths -------------------------------------------------------------


def python_read_paths(plugin_dir: Path, *, network: bool) -> list[Path]:
    """What Python needs to run, read-only, minus anything near the plugins root.

    Sorted, resolved, existing paths; none nested in another. Call it in the
    process to confine: it names that process's /proc/<pid> (a child's own
    /proc/self is therefore not readable). Not granted: /etc/passwd and
    /etc/group (they list every account and home directory; Python reads them
    only when HOME or USER/LOGNAME are unset, and the supervisor passes those
    on), /tmp and /dev/shm (shared with every other process; so tempfile falls
    back to the cwd and multiprocessing locks do not work), and the rest of
    /proc (other processes' command lines and environments) and /sys.
    """
    candidates: list[str] = [
        sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
        os.path.realpath(sys.executable),
        *_package_dirs("protocol", "worker"),
        *_import_path(),
        *_site_packages(),
        *SYSTEM_LIBRARIES, *TIME_ZONES, *DEVICES,
        f"/proc/{os.getpid()}",  # what /proc/self and /proc/thread-self lead to, for this process only
    ]
    if network:
        candidates += [*_ca_paths(), *NAME_RESOLUTION]
    return outside_plugins(candidates, plugin_dir)


def _import_path() -> list[str]:
    """sys.path without the folder that merely holds our packages: in a source
    checkout (PYTHONPATH, or an editable install) that is the whole checkout,
    with its .git, its tests and its own plugins/. The packages themselves are
    granted by _package_dirs; a site-packages folder stays granted whole."""
    holders = {os.path.realpath(os.path.dirname(folder)) for folder in _package_dirs("protocol", "worker")}
    holders -= {os.path.realpath(folder) for folder in _site_packages()}
    return [entry for entry in sys.path if os.path.realpath(entry or ".") not in holders]


def _package_dirs(*names: str) -> list[str]:
    """The packages' own folders: not their parent, which in a checkout also holds plugins/."""
    folders = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders += list(spec.submodule_search_locations)
    return folders


def _site_packages() -> list[str]:
    found = list(site.getsitepackages()) + [sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return found


def _ca_paths() -> list[str]:
    import ssl  # only networked plugins pay for it

    verify = ssl.get_default_verify_paths()
    # SSL_CERT_FILE / SSL_CERT_DIR are honoured: they show up in cafile / capath.
    named = [verify.cafile, verify.capath, verify.openssl_cafile, verify.openssl_capath]
    return [path for path in named if path] + list(CA_PATHS)


def outside_plugins(candidates: Iterable[str | os.PathLike[str]], plugin_dir: Path) -> list[Path]:
    """The candidates that exist, resolved, with the plugins root and its siblings cut out.

    A candidate inside a protected folder is dropped; one that contains a
    protected folder is replaced by its children (recursively, skipping the
    protected ones); the filesystem root is dropped rather than expanded.
    """
    protected = _protected_folders(plugin_dir)
    granted: set[Path] = set()
    expanded: set[Path] = set()  # a symlink loop must not recurse forever
    pending = [Path(os.path.realpath(os.fspath(c))) for c in candidates]
    while pending:
        path = pending.pop()
        if not os.path.exists(path) or any(path.is_relative_to(p) for p in protected):
            continue
        if not any(p.is_relative_to(path) for p in protected):
            granted.add(path)
        elif path != Path(path.anchor) and path not in expanded:
            expanded.add(path)
            try:
                pending += [Path(os.path.realpath(entry.path)) for entry in os.scandir(path)]
            except OSError:
                continue  # cannot list it: grant nothing below it
    return _outermost(granted)


def _protected_folders(plugin_dir: Path) -> list[Path]:
    """The plugins root and every sibling, resolved (a symlinked sibling may live elsewhere)."""
    given = Path(os.path.abspath(plugin_dir))
    own = Path(os.path.realpath(given))
    roots = {Path(os.path.realpath(given.parent)), own.parent}
    protected = set(roots)
    for root in roots:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        protected |= {Path(os.path.realpath(e.path)) for e in entries} - {own}
    return sorted(protected)


def _outermost(paths: set[Path]) -> list[Path]:
    """Drop the paths inside another one: a rule on a folder covers what is beneath."""
    kept: list[Path] = []
    for path in sorted(paths, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return sorted(kept)


# --- applying ----------------------------------------------------------------


def restrict(plugin_dir: Path, *, network: bool, read_paths: Iterable[Path] | None = None) -> SandboxReport:
    """Confine the calling process and everything it creates later (see the module docstring).

    `read_paths` defaults to `python_read_paths(plugin_dir, network=network)`;
    given ones go through the same plugins-root filter. Raises RuntimeError if
    another thread exists, OSError if the kernel refuses a step (then nothing
    is enforced: restrict_self is the last step).
    """
    # Python threads only. Counting /proc/self/task would also see C threads,
    # but a thread that Thread.join() has already returned for lingers there
    # for a moment while the OS tears it down, so that count is racy.
    threads = threading.active_count()
    if threads > 1:
        raise RuntimeError(
            f"Landlock must be applied before any thread starts ({threads} threads exist): "
            "it confines only the calling thread and what it creates later"
        )
    abi = abi_version()
    if abi == 0:
        return SandboxReport(0, filesystem=False, network="unrestricted", signals_scoped=False, reason=_unavailable_reason())
    plugin_dir = Path(os.path.realpath(plugin_dir))
    if read_paths is None:
        reads = python_read_paths(plugin_dir, network=network)
    else:
        reads = outside_plugins(read_paths, plugin_dir)
    handled_fs = _handled_fs_rights(abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 and not network else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0

    libc = _libc()
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    ruleset_fd = _syscall(
        libc, "landlock_create_ruleset", ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(attr), ctypes.c_size_t(_ruleset_attr_size(abi)), ctypes.c_uint32(0),
    )
    try:
        for path in reads:
            _allow(libc, ruleset_fd, path, READ_RIGHTS & handled_fs)
        _allow(libc, ruleset_fd, Path(os.devnull), SINK_RIGHTS & handled_fs)
        if not _allow(libc, ruleset_fd, plugin_dir, PLUGIN_RIGHTS & handled_fs):
            raise FileNotFoundError(2, "the plugin folder does not exist", str(plugin_dir))
        # Required by restrict_self for an unprivileged process; it also keeps
        # setuid binaries from running with more rights than the sandbox.
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(errno)}")
        _syscall(
            libc, "landlock_restrict_self", ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF),
            ctypes.c_int(ruleset_fd), ctypes.c_uint32(0),
        )
    finally:
        os.close(ruleset_fd)
    return SandboxReport(
        abi,
        filesystem=True,
        network="allowed" if network else ("denied" if handled_net else "unrestricted"),
        signals_scoped=bool(scoped),
        reason=_missing(abi, network=network),
    )


def _allow(libc: ctypes.CDLL, ruleset_fd: int, path: Path, rights: int) -> bool:
    """Add a path-beneath rule; False if the path does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        try:
            _syscall(
                libc, "landlock_add_rule", ctypes.c_long(SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset_fd),
                ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0),
            )
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} ({path})") from exc
    except BaseException:
        os.close(fd)
        raise
    if path.is_relative_to("/proc"):
        _pinned_fds.append(fd)
    else:
        os.close(fd)
    return True


def _missing(abi: int, *, network: bool) -> str:
    gaps = []
    if abi < 2:
        gaps.append("renaming or linking across folders is always denied (ABI 1)")
    if abi < 3:
        gaps.append("truncation is not restricted (needs ABI 3)")
    if abi < 4 and not network:
        gaps.append("TCP is not restricted (needs ABI 4)")
    if abi < 5:
        gaps.append("device ioctls are not restricted (needs ABI 5)")
    if abi < 6:
        gaps.append("signals and abstract unix sockets are not scoped (needs ABI 6)")
    return "; ".join(gaps)
