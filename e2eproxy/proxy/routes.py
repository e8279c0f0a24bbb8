"""The one route table. Tests build the app with create_app and never copy these routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from e2eproxy.protocol import sliding
from e2eproxy.proxy.handlers import login, media, search, send, sliding_sync, sync, timeline
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.handlers.wellknown import well_known_client

# Everything under these prefixes is the homeserver's business unless a route above claims it.
PASSTHROUGH_PREFIXES = ("/_matrix/", "/.well-known/", "/_synapse/client/")
# Versions are spelled out rather than matched by a pattern: aiohttp indexes routes by their
# literal prefix, so a request is then checked against a few routes instead of all of them.
# Every client prefix the homeserver may accept (Synapse serves most endpoints under api/v1 or
# unstable as well as r0 and v3): a send through any of them must be encrypted, and a /sync
# through any of them must feed the engine, or it would acknowledge to-device keys unseen.
CLIENT = ("api/v1", "r0", "v3", "v1", "unstable")
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
    _add(router, "DELETE", client + "/devices/{device}", CLIENT, login.delete_device)
    _add(router, "POST", client + "/delete_devices", CLIENT, login.delete_devices)
    _add(router, "GET", client + "/sync", CLIENT, sync.sync)
    router.add_route("POST", sliding.PATH, sliding_sync.sync)
    _add(router, "PUT", room + "/send/{type}/{txn}", CLIENT, send.send)
    _add(router, "POST", room + "/send/{type}", CLIENT, send.send)  # the txn-less form
    _add(router, "POST", client + "/createRoom", CLIENT, send.create_room)
    for action in ("invite", "kick", "ban", "unban", "join", "leave"):
        _add(router, "POST", room + "/" + action, CLIENT, send.membership)
    _add(router, "PUT", room + "/state/{type}/{key:.*}", CLIENT, send.publish_then_forward)
    _add(router, "PUT", client + "/profile/{user}/{field}", CLIENT, send.publish_then_forward)
    _add(router, "POST", "/_matrix/media/VERSION/upload", MEDIA, media.upload)
    _add(router, "PUT", "/_matrix/media/VERSION/upload/{server}/{media_id}", MEDIA, media.upload_to)
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
        _add(router, "GET", relations + suffix, CLIENT, timeline.relations)
    _add(router, "GET", room + "/threads", CLIENT, timeline.threads)
    _add(router, "GET", client + "/notifications", CLIENT, timeline.notifications)
    _add(router, "POST", client + "/search", CLIENT, search.search)
    # Fail closed: any other shape of send (another prefix, method or nesting) is refused rather
    # than forwarded, since forwarding would put plaintext into a room that may be encrypted.
    router.add_route("*", r"/_matrix/client/{prefix:.+}/rooms/{room:[^/]*}/send{rest:(/.*)?}",
                     send.unknown_send)
    # The same for uploads (another prefix such as MSC2246's unstable one, another method):
    # forwarded, the file would reach the server in plaintext before any event says where.
    router.add_route("*", r"/_matrix/media/{prefix:.+}/upload{rest:(/.*)?}", media.unknown_upload)
    # URL previews: the client asks for the links it read, and it reads decrypted messages as if
    # they were plain; a preview request would tell the server what an encrypted room said.
    for preview in ("/_matrix/media/{version}/preview_url", "/_matrix/client/v1/media/preview_url"):
        router.add_route("*", preview, media.no_preview)
    for prefix in PASSTHROUGH_PREFIXES:
        router.add_route("*", prefix + "{tail:.*}", passthrough)
