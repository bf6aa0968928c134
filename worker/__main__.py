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
    args = parser.parse_args(argv)
    in_fd, out_fd = claim_stdio()
    die_with_parent(args.parent_pid)
    faulthandler.enable()  # a segfault leaves a Python traceback in the plugin's log

    from worker.session import serve

    code = serve(args.plugin_dir.resolve(), in_fd, out_fd, args.max_frame_size)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
