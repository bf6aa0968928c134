"""`python -m worker PLUGIN_DIR`: run one plugin, speaking the protocol on stdin/stdout."""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path

# Claim fds 0 and 1 before importing anything that could print.
from worker.stdio import claim_stdio, die_with_parent

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024  # protocol.DEFAULT_MAX_FRAME_SIZE, without importing it yet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("plugin_dir", type=Path, help="the plugin folder (holds plugin.toml)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit at once unless this is our parent")
    parser.add_argument("--max-frame-size", type=int, default=DEFAULT_MAX_FRAME_SIZE, help="largest frame in bytes")
    parser.add_argument("--data-limit-mb", type=int, default=0, help="RLIMIT_DATA in MiB (0: none)")
    parser.add_argument("--cpu-time-limit", type=float, default=0.0, help="RLIMIT_CPU in seconds (0: none)")
    parser.add_argument("--max-open-files", type=int, default=0, help="RLIMIT_NOFILE (0: unchanged)")
    parser.add_argument("--sandbox", choices=("off", "on", "required"), default="off", help="Landlock sandbox")
    parser.add_argument("--network", action="store_true", help="with the sandbox: allow TCP connect and bind")
    parser.add_argument("--standby", action="store_true", help="a spare: after hello, wait for activate before loading the plugin")
    args = parser.parse_args(argv)
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
