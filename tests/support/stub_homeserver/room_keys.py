"""Server-side key backup: /room_keys/version and /room_keys/keys."""

from __future__ import annotations

from aiohttp import web

from .common import JsonDict, client_routes, json_body, ok, session_of, stub_of
from .errors import missing_param, not_found


async def create_version(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    return ok({"version": stub_of(request).backups.create(session.user_id, body)})


async def version(request: web.Request) -> web.Response:
    session = session_of(request)
    backups = stub_of(request).backups
    version_id = request.match_info.get("version")
    if request.method == "GET":
        return ok(backups.get(session.user_id, version_id).info())
    assert version_id is not None
    if request.method == "PUT":
        backups.update(session.user_id, version_id, await json_body(request))
    else:
        backups.delete(session.user_id, version_id)
    return ok()


def _version_param(request: web.Request) -> str:
    version_id = request.query.get("version")
    if version_id is None:
        raise missing_param("Missing version")
    return version_id


async def keys(request: web.Request) -> web.Response:
    session = session_of(request)
    backups = stub_of(request).backups
    version_id = _version_param(request)
    room_id = request.match_info.get("room_id")
    session_id = request.match_info.get("session_id")
    if request.method == "PUT":
        backup = backups.for_write(session.user_id, version_id)
        body = await json_body(request)
        rooms: dict[str, dict[str, JsonDict]]
        if room_id is None:
            rooms = {r: v.get("sessions", {}) for r, v in body.get("rooms", {}).items()}
        elif session_id is None:
            rooms = {room_id: body.get("sessions", {})}
        else:
            rooms = {room_id: {session_id: body}}
        backups.put_keys(backup, rooms)
        return ok({"etag": str(backup.etag), "count": backup.count()})
    backup = backups.get(session.user_id, version_id)
    if request.method == "DELETE":
        backups.delete_keys(backup, room_id, session_id)
        return ok({"etag": str(backup.etag), "count": backup.count()})
    if room_id is None:
        return ok({"rooms": {r: {"sessions": s} for r, s in backup.rooms.items() if s}})
    sessions = backup.rooms.get(room_id, {})
    if session_id is None:
        return ok({"sessions": sessions})
    if session_id not in sessions:
        raise not_found("No room_keys found")
    return ok(sessions[session_id])


def routes() -> list[web.RouteDef]:
    table = [
        ("POST", "/room_keys/version", create_version),
        ("GET", "/room_keys/version", version),
    ]
    for method in ("GET", "PUT", "DELETE"):
        table += [
            (method, "/room_keys/version/{version}", version),
            (method, "/room_keys/keys", keys),
            (method, "/room_keys/keys/{room_id}", keys),
            (method, "/room_keys/keys/{room_id}/{session_id}", keys),
        ]
    return client_routes(table)
