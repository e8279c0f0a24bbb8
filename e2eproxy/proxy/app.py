"""The application factory: one aiohttp app per configured homeserver."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from e2eproxy.config import Config, ServerConfig
from e2eproxy.proxy.keys import CONFIG, SERVER, UPSTREAM
from e2eproxy.proxy.middleware import add_cors_headers, errors_middleware, request_log_middleware
from e2eproxy.proxy.routes import add_routes
from e2eproxy.proxy.upstream import Upstream

# Matrix media can be large; the pass-through streams it, so no body size limit of our own.
CLIENT_MAX_SIZE = 0


def create_app(server: ServerConfig, config: Config) -> web.Application:
    app = web.Application(
        middlewares=[request_log_middleware, errors_middleware],
        client_max_size=CLIENT_MAX_SIZE,
        handler_args={"max_field_size": 64 * 1024, "max_line_size": 64 * 1024},
    )
    app[CONFIG] = config
    app[SERVER] = server
    app[UPSTREAM] = Upstream(server.homeserver, read_timeout=server.upstream_timeout)
    app.cleanup_ctx.append(_upstream_lifetime)
    app.on_response_prepare.append(add_cors_headers)
    add_routes(app)
    return app


async def _upstream_lifetime(app: web.Application) -> AsyncIterator[None]:
    upstream = app[UPSTREAM]
    await upstream.start()
    yield
    await upstream.close()
