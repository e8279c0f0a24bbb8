"""/search: the server can only search what it can read, and the term would tell it what the
user looks for in encrypted rooms. So the term goes to the server only for rooms it says are
unencrypted (its own ``404`` for their ``m.room.encryption``): the request's rooms (or all the
user's joined rooms) are narrowed to those, and the answer names the rooms left out under
``org.e2eproxy.rooms_not_searched``. With no such room left, nothing is sent: the client gets
``400 M_UNRECOGNIZED`` saying why. Encrypted rooms are not searched locally (the proxy keeps no
index of what it decrypted)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from e2eproxy.errors import (
    BadJson,
    MatrixError,
    NotJson,
    Unrecognized,
    UpstreamError,
    homeserver_error,
)
from e2eproxy.protocol import rewrite
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import UPSTREAM
from e2eproxy.proxy.handlers.common import (
    forward_for_json,
    read_body,
    respond,
    token_info,
)
from e2eproxy.proxy.handlers.decrypting import decrypt_in_place
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.outgoing import call
from e2eproxy.proxy.room_crypto import V3, room_is_encrypted
from e2eproxy.proxy.upstream import Upstream

NOT_SEARCHED = "org.e2eproxy.rooms_not_searched"
# Rooms whose encryption state is asked of the server at once.
PARALLEL_CHECKS = 8


async def search(request: web.Request) -> web.StreamResponse:
    info = await token_info(request)
    if info is None or info.account is None:
        return await passthrough(request)
    account = info.account
    body = _json_object(await read_body(request))
    categories = body.get("search_categories")
    criteria = categories.get("room_events") if isinstance(categories, dict) else None
    if criteria is None:
        answer = await forward_for_json(request, body=json.dumps(body).encode())
        return respond(answer)
    if not isinstance(criteria, dict):
        raise BadJson("search_categories.room_events must be an object")
    upstream = request.app[UPSTREAM]
    wanted = await _rooms_in_scope(upstream, account, criteria)
    if not wanted:  # nothing to search: nothing to tell the server
        return web.json_response({"search_categories": {"room_events": {
            "results": [], "count": 0, "highlights": [], NOT_SEARCHED: [],
        }}})
    plain = await _unencrypted(upstream, account, wanted)
    left_out = [room for room in wanted if room not in plain]
    if not plain:
        raise Unrecognized(
            "e2eproxy searches only rooms the homeserver says are unencrypted, and none of "
            "these is: the server holds only the ciphertext of an encrypted room, and the "
            "search term would tell it what you are looking for. Nothing was sent."
        )
    criteria["filter"] = {**(criteria.get("filter") or {}), "rooms": plain}
    answer = await forward_for_json(request, body=json.dumps(body).encode())
    if answer.status != 200 or not isinstance(answer.data, dict):
        return respond(answer)
    slots = list(rewrite.search_slots(answer.data))
    if slots:
        await decrypt_in_place(request, account, slots)
    room_events = answer.data.get("search_categories", {}).get("room_events")
    if isinstance(room_events, dict):
        room_events[NOT_SEARCHED] = left_out
    return respond(answer, answer.data)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise NotJson("The request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadJson("The request body must be a JSON object")
    return body


async def _rooms_in_scope(upstream: Upstream, account: Account,
                          criteria: dict[str, Any]) -> list[str]:
    """The rooms the request would search: its ``filter.rooms``, else every joined room, less
    its ``filter.not_rooms``."""
    flt = criteria.get("filter")
    if flt is None:
        flt = {}
    if not isinstance(flt, dict):
        raise BadJson("filter must be an object")
    rooms, not_rooms = flt.get("rooms"), flt.get("not_rooms", [])
    for name, value in (("rooms", rooms), ("not_rooms", not_rooms)):
        if value is not None and not (
            isinstance(value, list) and all(isinstance(r, str) for r in value)
        ):
            raise BadJson(f"filter.{name} must be a list of room ids")
    if rooms is None:
        status, joined = await call(upstream, account, "GET", f"{V3}/joined_rooms", attempts=2)
        rooms = joined.get("joined_rooms") if isinstance(joined, dict) else None
        if status != 200 or not isinstance(rooms, list):
            raise homeserver_error(status, joined, "Could not list your rooms to keep the "
                                   "search to unencrypted ones; nothing was sent")
    return [r for r in dict.fromkeys(rooms) if isinstance(r, str) and r not in not_rooms]


async def _unencrypted(upstream: Upstream, account: Account, rooms: list[str]) -> list[str]:
    """Of ``rooms``, those the server says are unencrypted (doubt counts as encrypted)."""
    limit = asyncio.Semaphore(PARALLEL_CHECKS)

    async def plain(room_id: str) -> bool:
        async with limit:
            try:
                return not await room_is_encrypted(upstream, account, room_id)
            except (MatrixError, UpstreamError):
                return False

    verdicts = await asyncio.gather(*(plain(room) for room in rooms))
    return [room for room, ok in zip(rooms, verdicts, strict=True) if ok]
