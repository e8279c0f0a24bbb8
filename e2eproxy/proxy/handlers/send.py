"""Writing into rooms: encrypt what goes into encrypted rooms, fail closed whatever happens.

Nothing the client sends into an encrypted room reaches the server as plaintext (ARCHITECTURE.md
rule 4): when the room's state is unknown the server is asked, and when anything fails the client
gets a Matrix error and nothing is sent.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web

from e2eproxy.errors import (
    BadJson,
    Conflict,
    NotJson,
    Unrecognized,
    homeserver_error,
)
from e2eproxy.protocol.media_fields import AVATAR_URL_FIELDS, fields_of
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import REGISTRY, UPSTREAM
from e2eproxy.proxy.handlers.common import (
    forward_for_json,
    read_body,
    refuse,
    require_token,
    respond,
    token_info,
)
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.media_refs import (
    PlainRoom,
    encrypt_references,
    publish_initial_state,
    publish_plain_references,
)
from e2eproxy.proxy.outgoing import call
from e2eproxy.proxy.registry import TokenInfo, token_of
from e2eproxy.proxy.room_crypto import encrypt_for_room, no_such_state, room_is_encrypted

log = logging.getLogger(__name__)

V3 = "/_matrix/client/v3"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _known_plain() -> bool:
    return True  # the caller has just heard the server say so


def _encode(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


async def _send_encrypted(
    request: web.Request,
    account: Account,
    room_id: str,
    txn: str,
    encrypted: dict[str, Any],
    txn_key: str,
) -> web.Response:
    upstream = request.app[UPSTREAM]
    path = f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.encrypted/{quote(txn, safe='')}"
    # Kept: e.g. a delayed event (MSC4140) or an appservice's `ts`; not a token in the query,
    # since ours goes in the header (and the homeserver refuses both at once).
    query = [(k, v) for k, v in parse_qsl(request.query_string, True) if k != "access_token"]
    if query:
        path += f"?{urlencode(query)}"
    status, body = await call(upstream, account, "PUT", path, encrypted)
    if not isinstance(body, dict):  # an HTML error page, a cut answer: never a bare `null`
        raise homeserver_error(status, body, "The homeserver gave no answer to the send")
    if status == 200:
        # Not awaited: the ciphertext is already stored under the txn, so losing this write
        # only means a retry resends it and the server's own txn dedup answers.
        account.in_background(
            account.store.put_txn(
                account.key, txn_key, {"room_id": room_id, "content": encrypted, "response": body}
            )
        )
    return web.json_response(body, status=status)


async def unknown_send(request: web.Request) -> web.StreamResponse:
    raise Unrecognized(
        "e2eproxy does not forward this form of room send (it could leak plaintext into an "
        "encrypted room); use PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}",
    )


async def send(request: web.Request) -> web.StreamResponse:
    room_id = request.match_info["room"]
    event_type = request.match_info["type"]
    # POST .../send/{type} has no txn id: one of ours keeps the encrypted path idempotent
    # within this request (the client cannot retry it safely anyway).
    txn = request.match_info.get("txn") or f"e2eproxy-{uuid.uuid4().hex}"
    # Never forwarded as it came without a token we can see: the homeserver also takes one
    # from a form-encoded body (which can be JSON as well), for an account we would not know.
    require_token(request)
    if request.content_type in FORM_TYPES:
        raise NotJson("A room event is JSON, not a form")
    info = await token_info(request)
    if info is None or event_type == "m.room.encrypted":
        return await passthrough(request)  # already encrypted: the client did it itself
    raw = await read_body(request)
    try:
        content = json.loads(raw)
    except ValueError:
        raise NotJson("Content not JSON.") from None
    if not isinstance(content, dict):
        raise BadJson("Content must be a JSON object.")
    if info.account is None:
        return await _send_without_keys(request, info, room_id, raw)
    account = info.account
    upstream = request.app[UPSTREAM]
    if not await room_is_encrypted(upstream, account, room_id):
        # Encryption is never switched off again, so a txn of ours can't be in a plain room;
        # the server's own txn dedup covers plain retries.
        plain = await publish_plain_references(
            request, account, content, fields_of(event_type), _known_plain
        )
        if plain is not content and account.machine.is_room_encrypted(room_id):
            # Publishing files took a while, and a sync meanwhile showed encryption switched on.
            raise Conflict(
                "The room became encrypted while sending; nothing was sent"
            )
        answer = await forward_for_json(
            request, body=_encode(plain) if plain is not content else raw
        )
        return respond(answer)
    txn_key = f"send\0{room_id}\0{event_type}\0{txn}"
    stored = await account.store.get_txn(account.key, txn_key)
    if stored is not None and isinstance(stored.get("response"), dict):
        return web.json_response(stored["response"])
    if stored is not None and isinstance(stored.get("content"), dict):
        # Encrypted before a crash or a failed send: send the same ciphertext again.
        return await _send_encrypted(request, account, room_id, txn, stored["content"], txn_key)
    content = await encrypt_references(request, account, content)
    encrypted = await encrypt_for_room(upstream, account, room_id, event_type, content, txn_key)
    return await _send_encrypted(request, account, room_id, txn, encrypted, txn_key)


async def _send_without_keys(
    request: web.Request, info: TokenInfo, room_id: str, raw: bytes
) -> web.StreamResponse:
    """A device whose keys we do not hold may still write into unencrypted rooms."""
    path = f"{V3}/rooms/{quote(room_id, safe='')}/state/m.room.encryption/"
    status, body = await request.app[UPSTREAM].request_json(
        "GET", path, access_token=token_of(request)
    )
    if status == 200:
        raise refuse(info)
    if not no_such_state(status, body):
        raise homeserver_error(status, body, "Could not tell whether the room is encrypted")
    return respond(await forward_for_json(request, body=raw))


async def create_room(request: web.Request) -> web.StreamResponse:
    """Learn at once that a new room is encrypted, and query the invitees' devices early."""
    require_token(request)
    raw = await read_body(request)
    info = await token_info(request)
    if info is not None and info.account is not None and raw:
        try:
            spec_in = json.loads(raw)
        except ValueError:
            spec_in = None
        if isinstance(spec_in, dict):
            published = await publish_initial_state(request, info.account, spec_in)
            if published is not spec_in:
                raw = _encode(published)
    answer = await forward_for_json(request, body=raw)
    if answer.status != 200 or not isinstance(answer.data, dict):
        return respond(answer)
    room_id = answer.data.get("room_id")
    try:
        spec = json.loads(raw) if raw else {}
    except ValueError:
        spec = {}
    if isinstance(room_id, str) and info is not None and info.account is not None:
        await _note_new_room(info.account, room_id, spec if isinstance(spec, dict) else {})
    return respond(answer)


def _initial_state(spec: dict[str, Any], event_type: str) -> dict[str, Any] | None:
    states = spec.get("initial_state")
    for state in states if isinstance(states, list) else []:
        content = state.get("content") if isinstance(state, dict) else None
        if isinstance(content, dict) and state.get("type") == event_type:
            return content
    return None


async def _note_new_room(account: Account, room_id: str, spec: dict[str, Any]) -> None:
    encryption = _initial_state(spec, "m.room.encryption")
    visibility = _initial_state(spec, "m.room.history_visibility")
    invite = spec.get("invite")
    invites = [u for u in invite if isinstance(u, str)] if isinstance(invite, list) else []
    async with account.step(wake=True) as step:
        if encryption is not None:
            step.machine.update_room_encryption(room_id, encryption)
        if visibility is not None and isinstance(visibility.get("history_visibility"), str):
            step.machine.update_history_visibility(room_id, visibility["history_visibility"])
        members = {account.user_id: "join", **{u: "invite" for u in invites}}
        step.machine.update_room_members(room_id, members)
    account.members_changed(room_id)


async def membership(request: web.Request) -> web.StreamResponse:
    """invite/kick/ban/unban/join/leave: pass through, then our member lists are stale."""
    response = await passthrough(request)
    room_id = request.match_info.get("room")
    if room_id:
        for account in request.app[REGISTRY].accounts.values():
            account.members_changed(room_id)
    return response


async def publish_then_forward(request: web.Request) -> web.StreamResponse:
    """State events and profile changes: uploads they name go up in plaintext first."""
    require_token(request)
    info = await token_info(request)
    raw = await read_body(request)
    if info is None or info.account is None or not raw:
        return respond(await forward_for_json(request, body=raw))
    try:
        data = json.loads(raw)
    except ValueError:
        return respond(await forward_for_json(request, body=raw))
    account = info.account
    plain_room: PlainRoom | None = None
    if "room" in request.match_info:  # a state event: its fields, its room
        fields = fields_of(request.match_info["type"])
        room_id = request.match_info["room"]

        async def plain_room() -> bool:
            return not await room_is_encrypted(request.app[UPSTREAM], account, room_id)
    else:  # a profile field; the profile shows in every room, encrypted ones too
        fields = AVATAR_URL_FIELDS if request.match_info.get("field") == "avatar_url" else ()
    published = await publish_plain_references(request, account, data, fields, plain_room)
    body = raw if published is data else _encode(published)
    return respond(await forward_for_json(request, body=body))
