"""`neko-supervisor` (also `python -m supervisor`).

    neko-supervisor list PLUGINS_DIR [--json]
    neko-supervisor call PLUGINS_DIR PLUGIN ENTRY [--args JSON] [--timeout S]
    neko-supervisor serve PLUGINS_DIR [--host 127.0.0.1] [--port 8765] [--token-file PATH]

`call` prints the entry's value as JSON on stdout and nothing else there; logs
go to stderr. On failure: one line on stderr, no traceback, exit 1 (2 for a
usage error: bad arguments, bad JSON, unknown plugin or entry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from supervisor import jsonvalue
from supervisor.errors import (
    EntryNotFound,
    InvalidArguments,
    ManifestError,
    PluginError,
    PluginNotFound,
)
from supervisor.slot import PluginStatus
from supervisor.supervisor import Supervisor

EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE_ERRORS = (PluginNotFound, EntryNotFound, InvalidArguments, ManifestError)


class UsageError(Exception):
    pass


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return int(text)


def _port_range(text: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    if not (dash and first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) <= 65535):
        raise argparse.ArgumentTypeError(f"must be FIRST-LAST, two port numbers from 1 to 65535 in order, got {text!r}")
    return int(first), int(last)


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage and then the error; the CLI promises one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="neko-supervisor", description="Run N.E.K.O plugins in isolated worker processes.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v: plugin output, -vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    list_cmd = commands.add_parser("list", help="list the plugins of a folder with their entries")
    list_cmd.add_argument("plugins_dir", type=Path, metavar="PLUGINS_DIR")
    list_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")

    call = commands.add_parser("call", help="call one entry of one plugin and print its value as JSON")
    call.add_argument("plugins_dir", type=Path, metavar="PLUGINS_DIR")
    call.add_argument("plugin", metavar="PLUGIN", help="plugin id")
    call.add_argument("entry", metavar="ENTRY", help="entry id")
    call.add_argument("--args", default="{}", metavar="JSON", help="the arguments, a JSON object (default {})")
    call.add_argument("--timeout", type=_positive_float, default=None, metavar="S", help="call timeout in seconds")

    serve = commands.add_parser("serve", help="run the plugins as a long-lived HTTP service (see README, The host service)")
    serve.add_argument("plugins_dir", type=Path, metavar="PLUGINS_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else is your explicit choice)")
    serve.add_argument("--port", type=_port, default=8765, help="TCP port (default 8765; 0: any free port)")
    serve.add_argument(
        "--token-file", type=Path, default=None, metavar="PATH",
        help="read the API token from PATH (NEKO_SUPERVISOR_TOKEN wins; default: a new random token in a 0600 file)",
    )
    serve.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable; the bound address always works)",
    )
    serve.add_argument("--log-format", choices=("text", "json"), default="text", help="stderr log lines as text (default) or JSON")
    serve.add_argument("--no-access-log", dest="access_log", action="store_false", help="no log line per HTTP request")
    serve.add_argument("--max-body-mb", type=_positive_float, default=16.0, metavar="MB", help="largest request body (default 16)")
    serve.add_argument("--max-timeout", type=_positive_float, default=300.0, metavar="S", help="cap on a caller's ?timeout= (default 300)")
    serve.add_argument(
        "--ray", dest="ray_address", default=None, metavar="ADDRESS",
        help="run the plugins on this Ray cluster (host:port, or auto; needs neko-supervisor[ray]; see README, Scaling out)",
    )
    serve.add_argument(
        "--ray-channel-ports", dest="ray_channel_ports", type=_port_range, default=None, metavar="FIRST-LAST",
        help="with --ray: the ports a node may open for its workers' channels, for firewalls that open only some (default any)",
    )
    for sub in (list_cmd, call, serve):  # -v also after the subcommand
        sub.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument(
            "--sandbox", choices=("off", "on", "required"), default="off",
            help="the least Landlock sandbox every plugin gets; a plugin.toml can ask for more (default off; see README, Security)",
        )
        sub.add_argument(
            "--no-network", dest="network", action="store_false",
            help="deny TCP to every sandboxed plugin, whatever its plugin.toml says",
        )
    return parser


async def _call(ns: argparse.Namespace) -> int:
    try:
        args = json.loads(ns.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise UsageError(f"--args must be a JSON object, got {type(args).__name__}")
    async with Supervisor(ns.plugins_dir, auto_start=False, sandbox=_sandbox(ns), network=ns.network) as sup:
        await sup.start_plugin(ns.plugin)
        _warn(sup.status(ns.plugin))
        try:
            value = await sup.call(ns.plugin, ns.entry, args, timeout=ns.timeout)
        except PluginError as exc:
            # Answer now: stopping a hung worker can take until its kill.
            return _report(exc)
        try:
            text = jsonvalue.dumps(value)
        except ValueError as exc:
            print(f"neko-supervisor: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(text, flush=True)
        return 0


async def _list(ns: argparse.Namespace) -> list[dict[str, Any]]:
    async with Supervisor(ns.plugins_dir, auto_start=False, sandbox=_sandbox(ns), network=ns.network) as sup:
        async def probe(plugin_id: str) -> None:
            status = sup.status(plugin_id)
            if status.state == "stopped":  # enabled and with a good manifest
                with contextlib.suppress(PluginError):  # reported through its status below
                    await sup.start_plugin(plugin_id)

        await asyncio.gather(*(probe(pid) for pid in sup.plugin_ids))
        rows = []
        for st in sup.statuses():
            _warn(st)
            rows.append(
                {
                    "id": st.id,
                    "name": st.name,
                    "version": st.version,
                    "state": st.state.value,
                    "entries": [e.id for e in st.entries],
                    "error": (st.error or "").splitlines()[0] if st.error else None,
                }
            )
        return rows


def _sandbox(ns: argparse.Namespace) -> bool | str:
    modes: dict[str, bool | str] = {"off": False, "on": True, "required": "required"}
    return modes[ns.sandbox]


def _warn(status: PluginStatus) -> None:
    """A sandbox that was asked for and did not apply, or a misspelt manifest key, is never silent."""
    for warning in status.warnings:
        print(f"neko-supervisor: warning: {warning}", file=sys.stderr)
    sandbox = status.protections.get("sandbox", {})
    if sandbox.get("requested", "off") != "off" and not sandbox.get("abi"):
        print(f"neko-supervisor: warning: plugin {status.id!r} runs WITHOUT its sandbox: {sandbox['reason']}", file=sys.stderr)


def _print_table(rows: list[dict[str, Any]]) -> None:
    headers = ["ID", "NAME", "VERSION", "STATE", "ENTRIES"]
    table = [[r["id"], r["name"], r["version"], r["state"], ", ".join(r["entries"]) or (r["error"] or "-")] for r in rows]
    widths = [max(len(str(row[i])) for row in [headers, *table]) for i in range(len(headers) - 1)]
    for row in [headers, *table]:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + str(row[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        return _serve(ns)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(ns.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not ns.verbose:
        # Plugin output is in each plugin's log file; on the terminal only with -v.
        logging.getLogger("supervisor.plugin").setLevel(logging.CRITICAL + 1)
    try:
        if ns.command == "call":
            return asyncio.run(_call(ns))
        rows = asyncio.run(_list(ns))
        if ns.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_table(rows)
    except UsageError as exc:
        print(f"neko-supervisor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PluginError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130
    return 0


def _serve(ns: argparse.Namespace) -> int:
    # Imported here: `list` and `call` need neither aiohttp's server nor prometheus-client.
    from supervisor.service import ServeError, ServeOptions, serve
    from supervisor.service.logformat import configure

    configure(ns.log_format, logging.DEBUG if ns.verbose else logging.INFO)
    options = ServeOptions(
        plugins_dir=ns.plugins_dir, host=ns.host, port=ns.port, token_file=ns.token_file, allow_hosts=tuple(ns.allow_host),
        max_body=int(ns.max_body_mb * 1024 * 1024), max_timeout=ns.max_timeout, sandbox=_sandbox(ns), network=ns.network,
        access_log=ns.access_log, ray_address=ns.ray_address, ray_channel_ports=ns.ray_channel_ports,
    )
    try:
        return asyncio.run(serve(options))
    except ServeError as exc:
        print(f"neko-supervisor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C in the instant before the service's own handlers are in place
        return 130


def _report(exc: PluginError) -> int:
    """One line on stderr; the exit code for it."""
    text = " ".join(str(exc).split("\n", 1)[0].split())
    if isinstance(exc, USAGE_ERRORS):
        print(f"neko-supervisor: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    name = type(exc).__name__
    print(f"neko-supervisor: {text if text.startswith(name) else f'{name}: {text}'}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
