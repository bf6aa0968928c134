"""`neko-supervisor serve`: the supervisor as a long-lived HTTP service.

    bind (127.0.0.1:8765 unless told) -> print where -> start the plugins ->
    ready -> ... -> SIGTERM, SIGINT or SIGHUP -> refuse new calls, stop every plugin
    (the graceful stop sequence), close the server -> exit 0

SIGHUP (the terminal closed) counts as SIGTERM. A second signal forces it: every worker's tree is SIGKILLed at once and the
exit code is 1. The listening socket is bound before any plugin starts, so a
port in use fails in a second, and /livez answers during a slow start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from aiohttp import web

from supervisor.launchers import LaunchError
from supervisor.service.app import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_TIMEOUT,
    ServiceConfig,
    ServiceState,
    create_app,
)
from supervisor.service.auth import (
    HostPolicy,
    Token,
    TokenError,
    is_loopback,
    load_token,
    new_token,
    save_token,
)
from supervisor.supervisor import Supervisor, default_log_dir

if TYPE_CHECKING:
    from supervisor.launchers.ray import RayLauncher

logger = logging.getLogger("supervisor.service")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_USAGE = 2
HTTP_SHUTDOWN_GRACE = 5.0  # seconds for answers still being written once the plugins are stopped
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


class ServeError(Exception):
    """The service cannot start (bad folder, bad token, port in use): one line for the user."""


def ray_launcher(address: str | None, channel_ports: tuple[int, int] | None = None) -> RayLauncher | None:
    """`--ray ADDRESS`: a RayLauncher, or ServeError if Ray is not installed."""
    if address is None:
        if channel_ports is not None:
            raise ServeError("--ray-channel-ports is for --ray: give the cluster's address too")
        return None
    try:
        from supervisor.launchers.ray import RayLauncher
    except ModuleNotFoundError as exc:
        raise ServeError(f"--ray needs Ray ({exc.name} is missing): pip install 'neko-supervisor[ray]'") from None
    return RayLauncher(address, channel_ports=channel_ports)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    plugins_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token_file: Path | None = None
    allow_hosts: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    max_timeout: float = DEFAULT_MAX_TIMEOUT
    sandbox: bool | str = False
    network: bool = True
    access_log: bool = True
    ray_address: str | None = None  # run the plugins on this Ray cluster (extra neko-supervisor[ray])
    ray_channel_ports: tuple[int, int] | None = None  # the ports its nodes may open for the workers' channels


async def serve(options: ServeOptions, out: TextIO | None = None) -> int:
    """Run until SIGTERM, SIGINT or SIGHUP; returns the exit code. Raises ServeError before serving."""
    out = out or sys.stdout
    if not options.plugins_dir.is_dir():
        raise ServeError(f"PLUGINS_DIR {options.plugins_dir} is not a folder")
    try:
        token = load_token(options.token_file) or new_token()
    except TokenError as exc:
        raise ServeError(str(exc)) from None
    raise_open_files_limit()
    launcher = ray_launcher(options.ray_address, options.ray_channel_ports)
    if launcher is not None:
        # Before serving: a cluster that cannot be joined is a start-up error naming --ray,
        # not a failed start of every plugin.
        try:
            await launcher.connect(options.plugins_dir.resolve())
        except LaunchError as exc:
            raise ServeError(f"--ray {options.ray_address}: {exc.message}") from None
    sup = Supervisor(options.plugins_dir, sandbox=options.sandbox, network=options.network, launcher=launcher)
    state = ServiceState()
    config = ServiceConfig(token, HostPolicy.for_bind(options.host, options.allow_hosts), options.max_body, options.max_timeout)
    runner = web.AppRunner(
        create_app(sup, config, state),
        access_log=logging.getLogger("aiohttp.access") if options.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        handle_signals=False,
        # A client that hangs up cancels its call (the worker is asked to stop it),
        # so callers that give up and retry cannot fill a plugin's places.
        handler_cancellation=True,
    )
    # From the first instant to the last: a signal at any point is a clean stop,
    # never a KeyboardInterrupt traceback or a token file left behind.
    stop = _SignalHandlers(sup, state)
    try:
        await runner.setup()
        try:
            return await _serve(options, sup, state, runner, token, stop, out)
        finally:
            await sup.stop()
            await runner.cleanup()
    finally:
        stop.remove()


async def _serve(
    options: ServeOptions, sup: Supervisor, state: ServiceState, runner: web.AppRunner, token: Token, stop: _SignalHandlers, out: TextIO
) -> int:
    site = web.TCPSite(runner, options.host, options.port, shutdown_timeout=HTTP_SHUTDOWN_GRACE)
    try:
        await site.start()
    except OSError as exc:
        raise ServeError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from None
    host, port = runner.addresses[0][:2]
    if token.source == "generated":
        try:
            token = save_token(token, default_log_dir(sup.plugins_dir) / f"token-{port}")
        except (TokenError, OSError) as exc:
            raise ServeError(f"cannot write the API token file: {exc}") from None
    try:
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        where = f"in {token.path}" if token.path is not None else f"from {token.source}"
        _say(out, f"serving {sup.plugins_dir} on {url} (API token {where})")
        logger.info("listening on %s", url)
        if not is_loopback(options.host):  # a wildcard address included
            logger.warning("listening beyond this machine over plain HTTP: the token crosses the network unencrypted")
        await _run_until_signal(sup, state, stop, out)
    finally:
        if token.source == "generated" and token.path is not None:
            with contextlib.suppress(OSError):
                token.path.unlink()
    return EXIT_FORCED if stop.forced else EXIT_OK


async def _run_until_signal(sup: Supervisor, state: ServiceState, stop: _SignalHandlers, out: TextIO) -> None:
    starting = asyncio.ensure_future(sup.start())
    await asyncio.wait({starting, stop.requested}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        starting.result()
        for status in sup.statuses():
            detail = f" (pid {status.pid})" if status.pid else (f": {status.error.splitlines()[0]}" if status.error else "")
            _say(out, f"plugin {status.id}: {status.state.value}{detail}")
        if not sup.plugin_ids:
            _say(out, f"warning: no plugins in {sup.plugins_dir} (each plugin is a folder with a plugin.toml)")
            logger.warning("no plugins in %s", sup.plugins_dir)
        state.ready = True
        _say(out, "ready")
        logger.info("ready: %d plugins", len(sup.plugin_ids))
    await stop.requested
    logger.info("stopping %d plugins", len(sup.plugin_ids))
    starting.cancel()  # a start-up under way stops its plugins itself
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    await sup.stop()
    await stop.killed()
    logger.info("all plugins stopped")


def raise_open_files_limit() -> None:
    """Every connection is a descriptor: take all the kernel allows this process
    (the soft limit up to the hard one), so idle connections cannot starve the
    plugins' pipes and the resource watcher as soon as the usual 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))


class _SignalHandlers:
    """First SIGTERM, SIGINT or SIGHUP: graceful stop. A second: kill every worker now."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal closed

    def __init__(self, sup: Supervisor, state: ServiceState) -> None:
        self._sup = sup
        self._state = state
        self._loop = asyncio.get_running_loop()
        self.requested: asyncio.Future[None] = self._loop.create_future()
        self.forced = False
        self._killing: asyncio.Task[None] | None = None
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.requested.done():
            logger.info("%s: stopping every plugin (send it again to kill them now)", name)
            self._state.stopping = True
            self.requested.set_result(None)
        elif self._killing is None:
            logger.warning("second %s: killing every worker now", name)
            self.forced = True
            self._killing = self._loop.create_task(self._sup.kill())

    async def killed(self) -> None:
        """Wait for a forced kill under way, if any, to end."""
        if self._killing is not None:
            await self._killing

    def remove(self) -> None:
        for signum in self.SIGNALS:
            self._loop.remove_signal_handler(signum)


def _say(out: TextIO, text: str) -> None:
    print(f"neko-supervisor: {text}", file=out, flush=True)
