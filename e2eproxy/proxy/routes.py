"""The one route table. Tests build the app with create_app and never copy these routes."""

from __future__ import annotations

from aiohttp import web

from e2eproxy.proxy.handlers import login, media, send, sync, timeline
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.handlers.wellknown import well_known_client

# Everything under these prefixes is the homeserver's business unless a route above claims it.
PASSTHROUGH_PREFIXES = ("/_matrix/", "/.well-known/", "/_synapse/client/")
CLIENT = "/_matrix/client/{version:(?:r0|v3)}"
CLIENT_V1 = "/_matrix/client/{version:(?:r0|v3|v1)}"
ROOM = CLIENT + "/rooms/{room}"
ROOM_V1 = CLIENT_V1 + "/rooms/{room}"
LEGACY_MEDIA = "/_matrix/media/{version:(?:r0|v3|v1)}"
AUTH_MEDIA = "/_matrix/client/{version:v1}/media"


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/.well-known/matrix/client", well_known_client)
    router.add_post(CLIENT + "/login", login.login)
    router.add_post(CLIENT + "/logout", login.logout)
    router.add_post(CLIENT + "/logout/all", login.logout)
    router.add_get(CLIENT + "/sync", sync.sync)
    router.add_put(ROOM + "/send/{type}/{txn}", send.send)
    router.add_post(CLIENT + "/createRoom", send.create_room)
    for action in ("invite", "kick", "ban", "unban", "join", "leave"):
        router.add_post(ROOM + "/" + action, send.membership)
    router.add_put(ROOM + "/state/{type}/{key:.*}", send.publish_then_forward)
    router.add_put(CLIENT + "/profile/{user}/avatar_url", send.publish_then_forward)
    router.add_put(CLIENT + "/profile/{user}/{field}", send.publish_then_forward)
    router.add_post(LEGACY_MEDIA + "/upload", media.upload)
    for base in (AUTH_MEDIA, LEGACY_MEDIA):
        item = base + "/{kind:(?:download|thumbnail)}/{server}/{media_id}"
        router.add_get(item, media.download)
        router.add_get(item + "/{filename}", media.download)
    router.add_get(ROOM + "/messages", timeline.messages)
    router.add_get(ROOM + "/context/{event}", timeline.context)
    router.add_get(ROOM + "/event/{event}", timeline.event)
    router.add_get(ROOM_V1 + "/relations/{event}", timeline.relations)
    router.add_get(ROOM_V1 + "/relations/{event}/{rel_type}", timeline.relations)
    router.add_get(ROOM_V1 + "/relations/{event}/{rel_type}/{event_type}", timeline.relations)
    router.add_get(ROOM_V1 + "/threads", timeline.threads)
    router.add_get(CLIENT + "/notifications", timeline.notifications)
    router.add_post(CLIENT + "/search", timeline.search)
    for prefix in PASSTHROUGH_PREFIXES:
        router.add_route("*", prefix + "{tail:.*}", passthrough)
