"""Who may call the service: the API token, and the Host header check.

The token comes from `NEKO_SUPERVISOR_TOKEN`, else `--token-file`, else a new
random one written to a 0600 file in a 0700 folder of ours. It is compared in
constant time, as bytes; any malformed `Authorization` header is a 401.

The `Host` check stops DNS rebinding: a web page whose name resolves to
127.0.0.1 still sends its own name as Host, which is not one we answer to.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from supervisor.logs import make_folders

logger = logging.getLogger("supervisor.service")

TOKEN_VARIABLE = "NEKO_SUPERVISOR_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


class TokenError(Exception):
    """No usable token: says which source and why."""


@dataclass(frozen=True, slots=True)
class Token:
    value: bytes
    source: str                 # "NEKO_SUPERVISOR_TOKEN", "--token-file PATH" or "generated"
    path: Path | None = None    # where a client reads it (None when it came from the environment)

    def matches(self, header: str | None) -> bool:
        """Is `header` exactly "Bearer <our token>"? Never raises, whatever the header holds."""
        if header is None:
            return False
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            # aiohttp decodes headers with surrogateescape: this gives back the bytes sent.
            # Only HTTP's own whitespace: str.strip() would also drop a no-break space.
            candidate = presented.strip(" \t").encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(candidate, self.value)


def load_token(token_file: Path | None, environ: dict[str, str] | None = None) -> Token | None:
    """The operator's token (environment first, then --token-file), or None: generate one."""
    environ = dict(os.environ) if environ is None else environ
    if TOKEN_VARIABLE in environ:
        return Token(_checked(environ[TOKEN_VARIABLE], TOKEN_VARIABLE), TOKEN_VARIABLE)
    if token_file is None:
        return None
    try:
        info = token_file.stat()
        text = token_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"--token-file {token_file}: cannot read it: {exc}") from None
    if info.st_mode & 0o077:
        logger.warning("--token-file %s can be read by other users (mode %o); chmod 600 it", token_file, stat.S_IMODE(info.st_mode))
    return Token(_checked(text, f"--token-file {token_file}"), f"--token-file {token_file}", token_file)


def _checked(text: str, source: str) -> bytes:
    value = text.strip()
    if len(value) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{source}: the token must be at least {MIN_TOKEN_LENGTH} characters, got {len(value)}")
    if not value.isascii() or not value.isprintable() or any(ch.isspace() for ch in value):
        raise TokenError(f"{source}: the token must be printable ASCII without spaces")
    return value.encode("ascii")


def new_token() -> Token:
    return Token(secrets.token_urlsafe(32).encode("ascii"), "generated")


def save_token(token: Token, path: Path) -> Token:
    """Write `token` to `path` (mode 0600, replaced atomically) in a folder only we can enter."""
    private_folder(path.parent)
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(token.value + b"\n")
    os.replace(temporary, path)
    return Token(token.value, token.source, path)


def private_folder(folder: Path) -> None:
    """Create `folder` (and a missing parent) 0700, or check that the existing ones are
    real folders of ours that no one else can write to: under a shared /tmp anyone
    could have made either first, and whoever can write to a folder can swap the
    files in it. Then `folder` itself is closed to others (0700)."""
    make_folders(folder)
    for each in (folder.parent, folder):
        info = each.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise TokenError(
                f"{each} is not a private folder of this user (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); "
                "remove it or pass --token-file"
            )
    folder.chmod(0o700)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which `Host` header names the service answers to."""

    names: frozenset[str]
    any_ip_literal: bool   # bound to a wildcard address: every address of the machine is ours

    @classmethod
    def for_bind(cls, host: str, extra: tuple[str, ...] = ()) -> HostPolicy:
        names = {host.lower().strip("[]")} | {name.lower() for name in extra}
        if names & LOOPBACK_NAMES or is_loopback(host) or host in WILDCARD_ADDRESSES:
            names |= LOOPBACK_NAMES  # a wildcard bind listens on loopback too
        return cls(frozenset(names), host in WILDCARD_ADDRESSES)

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True  # HTTP/1.0 clients send none; browsers (the rebinding risk) always do
        name = _host_name(header)
        if name in self.names:
            return True
        return self.any_ip_literal and _is_ip(name)


def _host_name(header: str) -> str:
    """"Example.org:8765" -> "example.org"; "[::1]:8765" -> "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a service bound to `host` is reachable from this machine only."""
    name = host.lower().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
