"""Global and per-room account data."""

from __future__ import annotations

from aiohttp import web

from .common import client_routes, json_body, ok, require_self, session_of, stub_of


async def put_account_data(request: web.Request) -> web.Response:
    session = session_of(request)
    user_id = request.match_info["user_id"]
    require_self(session, user_id)
    content = await json_body(request)
    room_id = request.match_info.get("room_id")
    stub = stub_of(request)
    if room_id is not None:
        stub.room(room_id)
    stub.set_account_data(user_id, request.match_info["event_type"], content, room_id)
    return ok()


async def get_account_data(request: web.Request) -> web.Response:
    session = session_of(request)
    user_id = request.match_info["user_id"]
    require_self(session, user_id)
    return ok(stub_of(request).accounts.get_account_data(
        user_id, request.match_info["event_type"], request.match_info.get("room_id")
    ))


def routes() -> list[web.RouteDef]:
    glob = "/user/{user_id}/account_data/{event_type}"
    room = "/user/{user_id}/rooms/{room_id}/account_data/{event_type}"
    return client_routes([
        ("PUT", glob, put_account_data),
        ("GET", glob, get_account_data),
        ("PUT", room, put_account_data),
        ("GET", room, get_account_data),
    ])
