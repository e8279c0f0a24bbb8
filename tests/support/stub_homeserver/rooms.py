"""Room writes: createRoom, membership, state, send and redact (idempotent per txn)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from aiohttp import web

from .accounts import Session
from .common import JsonDict, client_routes, json_body, ok, session_of, stub_of
from .errors import bad_json_field, not_found

_VERSION_PREFIX = re.compile(r"^/_matrix/client/[^/]+")


def _once(request: web.Request, session: Session, produce: Callable[[], JsonDict]) -> JsonDict:
    """Run ``produce`` once per (user, device, path); a retried txn gets the first answer."""
    stub = stub_of(request)
    key = (session.user_id, session.device_id, _VERSION_PREFIX.sub("", request.path))
    if key not in stub.txn_results:
        stub.txn_results[key] = produce()
    return stub.txn_results[key]


def _target(body: JsonDict) -> str:
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        raise bad_json_field("user_id is required")
    return user_id


async def create_room(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request, allow_empty=True)
    room = stub_of(request).room_ops.create_room(session.user_id, body)
    return ok({"room_id": room.room_id})


async def invite(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    stub.room_ops.invite(room, session.user_id, _target(body), body.get("reason"))
    return ok()


async def join(request: web.Request) -> web.Response:
    session = session_of(request)
    await json_body(request, allow_empty=True)
    stub = stub_of(request)
    room = stub.room(request.match_info["room"])
    stub.room_ops.join(room, session.user_id)
    return ok({"room_id": room.room_id})


async def leave(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request, allow_empty=True)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    stub.room_ops.leave(room, session.user_id, body.get("reason"))
    return ok()


async def kick(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    stub.room_ops.kick(room, session.user_id, _target(body), body.get("reason"))
    return ok()


async def put_state(request: web.Request) -> web.Response:
    session = session_of(request)
    content = await json_body(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    stored = stub.room_ops.set_state(
        room, session.user_id, request.match_info["event_type"],
        request.match_info.get("state_key", ""), content, session.device_id,
    )
    return ok({"event_id": stored.event_id})


async def send(request: web.Request) -> web.Response:
    session = session_of(request)
    content = await json_body(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    # POST .../send/{eventType} (Synapse has it) comes without a txn id: a fresh one.
    txn_id = request.match_info.get("txn_id") or secrets.token_hex(8)

    def produce() -> JsonDict:
        stored = stub.room_ops.send(
            room, session.user_id, request.match_info["event_type"], content,
            session.device_id, txn_id,
        )
        return {"event_id": stored.event_id}

    return ok(_once(request, session, produce))


async def redact(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request, allow_empty=True)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])

    def produce() -> JsonDict:
        stored = stub.room_ops.redact(
            room, session.user_id, request.match_info["event_id"], body.get("reason"),
            session.device_id, request.match_info["txn_id"],
        )
        return {"event_id": stored.event_id}

    return ok(_once(request, session, produce))


async def get_state_event(request: web.Request) -> web.Response:
    session = session_of(request)
    room = stub_of(request).room(request.match_info["room_id"])
    upto = room.visible_until(session.user_id)
    key = (request.match_info["event_type"], request.match_info.get("state_key", ""))
    stored = room.state_at(upto).get(key)
    if stored is None:
        raise not_found("Event not found.")
    if request.query.get("format") == "event":
        return ok(stored.for_client(session.user_id, session.device_id))
    return ok(stored.content)


def routes() -> list[web.RouteDef]:
    state = "/rooms/{room_id}/state/{event_type}"
    return client_routes([
        ("POST", "/createRoom", create_room),
        ("POST", "/rooms/{room_id}/invite", invite),
        ("POST", "/join/{room}", join),
        ("POST", "/rooms/{room}/join", join),
        ("POST", "/rooms/{room_id}/leave", leave),
        ("POST", "/rooms/{room_id}/kick", kick),
        ("PUT", state, put_state),
        ("PUT", state + "/{state_key:.*}", put_state),
        ("GET", state, get_state_event),
        ("GET", state + "/{state_key:.*}", get_state_event),
        ("PUT", "/rooms/{room_id}/send/{event_type}/{txn_id}", send),
        ("POST", "/rooms/{room_id}/send/{event_type}", send),
        ("PUT", "/rooms/{room_id}/redact/{event_id}/{txn_id}", redact),
    ])
