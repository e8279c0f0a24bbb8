"""The application factory: one aiohttp app per configured homeserver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from e2eproxy.config import Config, ServerConfig
from e2eproxy.crypto.settings import SharingStrategy
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.monitoring.requests import SERVER_LABEL
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import (
    CONFIG,
    HOST_NAMES,
    MEDIA,
    METRICS,
    REGISTRY,
    SERVER,
    STOPPING,
    UPSTREAM,
)
from e2eproxy.proxy.media import MediaService, MediaSpool, expire_uploads_forever
from e2eproxy.proxy.middleware import (
    add_cors_headers,
    errors_middleware,
    request_log_middleware,
    target_guard_middleware,
)
from e2eproxy.proxy.recovery import recover_quietly
from e2eproxy.proxy.registry import AccountRegistry
from e2eproxy.proxy.routes import add_routes
from e2eproxy.proxy.targets import allowed_host_names
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.store import Store, open_store
from e2eproxy.timing import SystemTimer, Timer

log = logging.getLogger(__name__)
STRATEGIES = {
    "all": SharingStrategy.ALL_EXCEPT_BLACKLISTED,
    "cross-signed": SharingStrategy.CROSS_SIGNED,
    "verified": SharingStrategy.ONLY_VERIFIED,
}


def automatic_recovery(server: ServerConfig, upstream: Upstream
                       ) -> Callable[[Account], None] | None:
    """For ``recovery_key_file``: every new device recovers (keys, signature, history)."""
    source = server.recovery_key_file
    if source is None:
        return None

    def recover(account: Account) -> None:
        try:
            key = read_recovery_key(source)
        except OSError as exc:
            log.warning("recovery_key_file of %s cannot be read: %s", server.name, exc.strerror)
            return
        account.in_background(recover_quietly(upstream, account, key))

    return recover


def read_recovery_key(source: str) -> str:
    """The file's text, or a systemd credential's for ``credential:NAME``."""
    if source.startswith("credential:"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
        path = Path(directory) / source.removeprefix("credential:")
    else:
        path = Path(source)
    return path.read_text().strip()


def create_app(
    server: ServerConfig,
    config: Config,
    *,
    store: Store | None = None,
    timer: Timer | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The proxy for one homeserver. Without `store`, the app opens (and closes) the one the
    configuration describes; `timer` is the time its accounts and their engines see; without
    `metrics` (the process's, which all its listeners share), the app counts in its own."""
    app = web.Application(
        middlewares=[request_log_middleware, errors_middleware, target_guard_middleware],
        # Bodies the proxy reads whole are bounded; the ones it passes on stream, as sent.
        client_max_size=server.max_json_body,
        # Never inflate a request body: a few kB of gzip can become gigabytes. Passed on, it
        # goes compressed as the client sent it; the handlers that read one refuse it.
        handler_args={
            "max_field_size": 64 * 1024,
            "max_line_size": 64 * 1024,
            "auto_decompress": False,
        },
    )
    app[CONFIG] = config
    app[SERVER] = server
    app[HOST_NAMES] = allowed_host_names(server)
    app[METRICS] = counted = metrics or Metrics()
    app[SERVER_LABEL] = server.name
    upstream = Upstream(server.homeserver, read_timeout=server.upstream_timeout)
    app[UPSTREAM] = upstream
    app[STOPPING] = asyncio.Event()

    async def on_shutdown(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(on_shutdown)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await upstream.start()
        own_store = store is None
        opened = store or await open_store(config.store, config.store_passphrase())
        registry = AccountRegistry(
            upstream,
            opened,
            timer or SystemTimer(),
            STRATEGIES[server.share_strategy or config.encryption.share_strategy],
            server_name=server.server_name,
            max_accounts=server.max_accounts,
            on_new_account=automatic_recovery(server, upstream),
            metrics=counted,
        )
        app[REGISTRY] = registry
        counted.accounts.watch(server.name, registry)
        spool = MediaSpool(config.store.data_dir / "media")
        spool.prepare()
        media = app[MEDIA] = MediaService(spool, config.encryption.pending_upload_ttl)
        await registry.load_stored()
        await media.expire_all(list(registry.accounts.values()))
        expiry = asyncio.create_task(
            expire_uploads_forever(media, registry.accounts.values), name="expire uploads"
        )
        yield
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        await registry.close()
        counted.accounts.unwatch(server.name, registry)
        if own_store:
            await opened.close()
        await upstream.close()

    app.cleanup_ctx.append(lifetime)
    if server.cors_origins:  # a hook on every response, for nothing without origins
        app.on_response_prepare.append(add_cors_headers)
    add_routes(app)
    return app
