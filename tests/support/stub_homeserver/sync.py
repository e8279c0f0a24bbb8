"""/sync (with long-polling) and filter storage."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .common import client_routes, int_param, json_body, ok, require_self, session_of, stub_of
from .errors import bad_json, invalid_param
from .filters import SyncFilter
from .stream import parse_token
from .syncbuilder import SyncBuilder, SyncRequest

MAX_TIMEOUT_MS = 60_000


def _filter_of(request: web.Request, user_id: str) -> SyncFilter:
    raw = request.query.get("filter")
    if raw is None:
        return SyncFilter()
    if raw.lstrip().startswith("{"):
        try:
            return SyncFilter.parse(json.loads(raw))
        except ValueError:
            raise bad_json("filter is not valid JSON") from None
    return SyncFilter.parse(stub_of(request).accounts.get_filter(user_id, raw))


async def sync(request: web.Request) -> web.Response:
    stub = stub_of(request)
    session = session_of(request)
    since_raw = request.query.get("since")
    since = None if since_raw is None else parse_token(since_raw)
    if since is not None and since > stub.stream.position:
        raise invalid_param("since token is from the future")
    full_state = request.query.get("full_state", "false").lower() == "true"
    req = SyncRequest(session.user_id, session.device_id, since,
                      _filter_of(request, session.user_id), full_state)
    timeout = min(max(int_param(request, "timeout", 0), 0), MAX_TIMEOUT_MS) / 1000
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # The session may be logged out while this request waits.
        stub.accounts.session(session.access_token)
        body, has_data = SyncBuilder(stub, req).build()
        remaining = deadline - loop.time()
        if has_data or since is None or full_state or remaining <= 0 or stub.stream.closing:
            return ok(body)
        await stub.stream.wait(remaining)


async def create_filter(request: web.Request) -> web.Response:
    session = session_of(request)
    user_id = request.match_info["user_id"]
    require_self(session, user_id)
    definition = await json_body(request)
    return ok({"filter_id": stub_of(request).accounts.add_filter(user_id, definition)})


async def get_filter(request: web.Request) -> web.Response:
    session = session_of(request)
    user_id = request.match_info["user_id"]
    require_self(session, user_id)
    return ok(stub_of(request).accounts.get_filter(user_id, request.match_info["filter_id"]))


def routes() -> list[web.RouteDef]:
    return client_routes([
        ("GET", "/sync", sync),
        ("POST", "/user/{user_id}/filter", create_filter),
        ("GET", "/user/{user_id}/filter/{filter_id}", get_filter),
    ])
