"""The one route table. Tests build the app with create_app and never copy these routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from e2eproxy.proxy.handlers import login, media, send, sync, timeline
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.handlers.wellknown import well_known_client

# Everything under these prefixes is the homeserver's business unless a route above claims it.
PASSTHROUGH_PREFIXES = ("/_matrix/", "/.well-known/", "/_synapse/client/")
# Versions are spelled out rather than matched by a pattern: aiohttp indexes routes by their
# literal prefix, so a request is then checked against a few routes instead of all of them.
CLIENT = ("r0", "v3")
CLIENT_V1 = ("r0", "v3", "v1")
MEDIA = ("r0", "v3", "v1")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _add(
    router: web.UrlDispatcher,
    method: str,
    template: str,
    versions: tuple[str, ...],
    handler: Handler,
) -> None:
    for version in versions:
        router.add_route(method, template.replace("VERSION", version), handler)


def add_routes(app: web.Application) -> None:
    router = app.router
    client, room = "/_matrix/client/VERSION", "/_matrix/client/VERSION/rooms/{room}"
    router.add_get("/.well-known/matrix/client", well_known_client)
    _add(router, "POST", client + "/login", CLIENT, login.login)
    _add(router, "POST", client + "/logout", CLIENT, login.logout)
    _add(router, "POST", client + "/logout/all", CLIENT, login.logout)
    _add(router, "GET", client + "/sync", CLIENT, sync.sync)
    _add(router, "PUT", room + "/send/{type}/{txn}", CLIENT, send.send)
    _add(router, "POST", client + "/createRoom", CLIENT, send.create_room)
    for action in ("invite", "kick", "ban", "unban", "join", "leave"):
        _add(router, "POST", room + "/" + action, CLIENT, send.membership)
    _add(router, "PUT", room + "/state/{type}/{key:.*}", CLIENT, send.publish_then_forward)
    _add(router, "PUT", client + "/profile/{user}/{field}", CLIENT, send.publish_then_forward)
    _add(router, "POST", "/_matrix/media/VERSION/upload", MEDIA, media.upload)
    for base, versions in (
        ("/_matrix/client/VERSION/media", ("v1",)),
        ("/_matrix/media/VERSION", MEDIA),
    ):
        for kind in ("download", "thumbnail"):
            item = f"{base}/{kind}/{{server}}/{{media_id}}"
            # HEAD too: a held upload exists only here, and the server would wait for it.
            for method in ("GET", "HEAD"):
                _add(router, method, item, versions, media.download)
                _add(router, method, item + "/{filename}", versions, media.download)
    _add(router, "GET", room + "/messages", CLIENT, timeline.messages)
    _add(router, "GET", room + "/context/{event}", CLIENT, timeline.context)
    _add(router, "GET", room + "/event/{event}", CLIENT, timeline.event)
    relations = room + "/relations/{event}"
    for suffix in ("", "/{rel_type}", "/{rel_type}/{event_type}"):
        _add(router, "GET", relations + suffix, CLIENT_V1, timeline.relations)
    _add(router, "GET", room + "/threads", CLIENT_V1, timeline.threads)
    _add(router, "GET", client + "/notifications", CLIENT, timeline.notifications)
    _add(router, "POST", client + "/search", CLIENT, timeline.search)
    for prefix in PASSTHROUGH_PREFIXES:
        router.add_route("*", prefix + "{tail:.*}", passthrough)
