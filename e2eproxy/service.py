"""Running the proxy: one listener per configured server, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from pathlib import Path

from aiohttp import web

from e2eproxy.config import Config, ServerConfig
from e2eproxy.control.commands import command_table
from e2eproxy.control.health_command import health_commands
from e2eproxy.control.protocol import socket_path
from e2eproxy.control.server import ControlServer
from e2eproxy.data_dir_claim import claim_data_dir
from e2eproxy.errors import ConfigError
from e2eproxy.monitoring.health import HealthChecker
from e2eproxy.monitoring.listener import start_metrics_listener
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.proxy.app import create_app
from e2eproxy.proxy.app_keys import REGISTRY, UPSTREAM
from e2eproxy.proxy.registry import AccountRegistry
from e2eproxy.store import Store, open_store
from e2eproxy.timing import SystemTimer

log = logging.getLogger("e2eproxy")

# The open files limit taken when the hard limit is unlimited.
FD_LIMIT_WITHOUT_HARD = 65_536
# In-flight requests get this long to finish after a stop signal.
SHUTDOWN_TIMEOUT_S = 5.0


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one; returns the limit now in force.

    Every account holds a long-poll to the homeserver, so a thousand accounts need a thousand
    sockets besides the clients': the usual soft limit of 1024 would stop a fleet with "too
    many open files" (Synapse raises its limit the same way)."""
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == infinity or (hard != infinity and soft >= hard):
        return int(soft)
    target = hard if hard != infinity else max(soft, FD_LIMIT_WITHOUT_HARD)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("Could not raise the open files limit from %d: %s", soft, exc)
        return int(soft)
    return int(target)


def prepare_data_dir(path: Path) -> None:
    """Create the data dir (private to us) and prove we can write in it, before listening."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data dir {path} is not writable: {exc.strerror}") from exc


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Start every listener, wait for a stop signal (or `stop`), then shut down cleanly."""
    prepare_data_dir(config.store.data_dir)
    raise_fd_limit()
    stop = stop or asyncio.Event()
    # Ready once the store is open and every listener's homeserver answers (ctl health, and
    # GET /health on the metrics listener).
    health = HealthChecker([server.name for server in config.servers], SystemTimer())
    # One control socket for the process; each listener's registry joins the list the
    # commands read as soon as it is up. Served first: a second process on this data dir is
    # refused here, before it opens the store or waits for leases.
    registries: list[AccountRegistry] = []
    commands = command_table(registries)
    commands.update(health_commands(health))
    control = ControlServer(socket_path(config.store.data_dir), commands)
    await control.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics(process=True)
    runners: list[web.AppRunner] = []
    metrics_runner: web.AppRunner | None = None
    store = None
    claim = None
    try:
        # Held while we live: a lease a crashed predecessor of this data dir left is taken at
        # once on restart, not waited out (data_dir_claim.py).
        claim = claim_data_dir(config.store.data_dir)
        if config.metrics.listen is not None:  # first: a liveness probe answers while we start
            metrics_runner = await start_metrics_listener(config.metrics.listen, metrics, health)
            log.info("Metrics and health probes on http://%s", config.metrics.listen)
        # Opened before listening: a wrong passphrase stops the start with one line.
        store = health.store = await open_store(config.store, config.store_passphrase(),
                                                site=claim.site if claim else None)
        for server in config.servers:
            runner = await _start_server(server, config, store, metrics)
            runners.append(runner)
            registries.append(runner.app[REGISTRY])
            health.add_upstream(server.name, runner.app[UPSTREAM])
        await stop.wait()
        log.info("Stopping (pid %d)", os.getpid())
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        # First: no command may reach an account while the accounts stop. And no probe says
        # ready any more: a load balancer stops sending requests here.
        await control.close()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await health.close()
        for runner in reversed(runners):
            await runner.cleanup()
        if store is not None:
            await store.close()
        if claim is not None:
            claim.release()


async def _start_server(server: ServerConfig, config: Config, store: Store, metrics: Metrics
                        ) -> web.AppRunner:
    """One listener's app, set up (its stored accounts restored) and listening."""
    runner = web.AppRunner(
        create_app(server, config, store=store, metrics=metrics),
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, server.listen.host, server.listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {server.listen} (servers.{server.name}): {exc.strerror}"
        ) from exc
    log.info("Listening on http://%s for homeserver %s", server.listen, server.homeserver)
    return runner
