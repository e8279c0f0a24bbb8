"""/.well-known/matrix/client answered by the proxy, so discovering clients keep using it."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from e2eproxy.errors import UpstreamError
from e2eproxy.proxy.app_keys import SERVER, UPSTREAM

log = logging.getLogger(__name__)


async def well_known_client(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    document: dict[str, Any] = {}
    # Keep what the homeserver advertises besides its own URL (identity server, auth issuer...).
    try:
        status, body = await request.app[UPSTREAM].request_json("GET", "/.well-known/matrix/client")
        if status == 200 and isinstance(body, dict):
            document = body
    except UpstreamError as exc:
        log.debug("No upstream .well-known: %s", exc)
    homeserver = document.get("m.homeserver")
    homeserver = dict(homeserver) if isinstance(homeserver, dict) else {}
    homeserver["base_url"] = server.advertised_url
    document["m.homeserver"] = homeserver
    return web.json_response(document)
