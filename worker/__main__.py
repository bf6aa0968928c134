"""`python -m worker PLUGIN_DIR`: run one plugin, speaking the protocol on stdin/stdout."""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

# Claim fds 0 and 1 before importing anything that could print.
from worker.stdio import claim_stdio, die_with_parent

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024  # protocol.DEFAULT_MAX_FRAME_SIZE, without importing it yet
SANDBOX_CHOICES = ("off", "on", "required")

# The options the supervisor passes: flag -> (attribute, type, default). A value
# of type bool is a switch that takes no value.
OPTIONS: dict[str, tuple[str, type, object]] = {
    "--parent-pid": ("parent_pid", int, None),
    "--max-frame-size": ("max_frame_size", int, DEFAULT_MAX_FRAME_SIZE),
    "--data-limit-mb": ("data_limit_mb", int, 0),
    "--cpu-time-limit": ("cpu_time_limit", float, 0.0),
    "--max-open-files": ("max_open_files", int, 0),
    "--sandbox": ("sandbox", str, "off"),
    "--network": ("network", bool, False),
    "--standby": ("standby", bool, False),
}


class Arguments:
    plugin_dir: Path
    parent_pid: int | None
    max_frame_size: int
    data_limit_mb: int
    cpu_time_limit: float
    max_open_files: int
    sandbox: str
    network: bool
    standby: bool


def parse_arguments(argv: list[str]) -> Arguments:
    """The command line as argparse reads it. The supervisor's own command lines
    take a short path that skips argparse (~3 ms of imports: argparse, gettext,
    locale, shutil); anything else (--help, a mistake, an abbreviation) goes to argparse."""
    return _parse_plain(argv) or _parse_with_argparse(argv)


def _parse_plain(argv: list[str]) -> Arguments | None:
    """Exact `--flag value` options around one positional; None for anything else."""
    args = Arguments()
    for attribute, _, default in OPTIONS.values():
        setattr(args, attribute, default)
    positional: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if not word.startswith("-"):
            positional.append(word)
            continue
        option = OPTIONS.get(word)
        if option is None:
            return None
        attribute, kind, _ = option
        if kind is bool:
            setattr(args, attribute, True)
            continue
        if index == len(argv) or argv[index].startswith("-"):
            return None
        value = argv[index]
        index += 1
        try:
            setattr(args, attribute, kind(value))
        except ValueError:
            return None
    if len(positional) != 1 or args.sandbox not in SANDBOX_CHOICES:
        return None
    args.plugin_dir = Path(positional[0])
    return args


def _parse_with_argparse(argv: list[str]) -> Arguments:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("plugin_dir", type=Path, help="the plugin folder (holds plugin.toml)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit at once unless this is our parent")
    parser.add_argument("--max-frame-size", type=int, default=DEFAULT_MAX_FRAME_SIZE, help="largest frame in bytes")
    parser.add_argument("--data-limit-mb", type=int, default=0, help="RLIMIT_DATA in MiB (0: none)")
    parser.add_argument("--cpu-time-limit", type=float, default=0.0, help="RLIMIT_CPU in seconds (0: none)")
    parser.add_argument("--max-open-files", type=int, default=0, help="RLIMIT_NOFILE (0: unchanged)")
    parser.add_argument("--sandbox", choices=SANDBOX_CHOICES, default="off", help="Landlock sandbox")
    parser.add_argument("--network", action="store_true", help="with the sandbox: allow TCP connect and bind")
    parser.add_argument("--standby", action="store_true", help="a spare: after hello, wait for activate before loading the plugin")
    return parser.parse_args(argv, namespace=Arguments())


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    in_fd, out_fd = claim_stdio()
    die_with_parent(args.parent_pid)
    faulthandler.enable()  # a segfault leaves a Python traceback in the plugin's log

    # Our own code is imported before the sandbox closes the file system.
    from worker.confine import Limits
    from worker.session import serve

    plugin_dir = args.plugin_dir.resolve()
    limits = Limits(args.data_limit_mb, args.cpu_time_limit, args.max_open_files, args.sandbox, args.network)
    code = serve(plugin_dir, in_fd, out_fd, args.max_frame_size, limits, standby=args.standby)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
