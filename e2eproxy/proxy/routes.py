"""The one route table. Tests build the app with create_app and never copy these routes."""

from __future__ import annotations

from aiohttp import web

from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.handlers.wellknown import well_known_client

# Everything under these prefixes is the homeserver's business unless a route above claims it.
PASSTHROUGH_PREFIXES = ("/_matrix/", "/.well-known/", "/_synapse/client/")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/matrix/client", well_known_client)
    for prefix in PASSTHROUGH_PREFIXES:
        app.router.add_route("*", prefix + "{tail:.*}", passthrough)
