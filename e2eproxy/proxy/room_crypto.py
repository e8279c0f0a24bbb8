"""A room's encryption as the shell needs it for any event it sends: is the room encrypted (what
we know, else the server's word; doubt is an error), who is in it, and the event encrypted
after its room key reached every member's devices. The client's sends (handlers/send.py) and
the engine's own room events (in-room verification) both go through here."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from e2eproxy.errors import BadRequest, Errcode, LocalProtocolError, homeserver_error
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.outgoing import call, share_room_key
from e2eproxy.proxy.upstream import Upstream

V3 = "/_matrix/client/v3"


def no_such_state(status: int, body: Any) -> bool:
    """The server's own "this room has no such state event": nothing else means "plain" (a 404
    from a proxy in between, or an endpoint it does not know, is doubt)."""
    return status == 404 and isinstance(body, dict) and body.get("errcode") == Errcode.NOT_FOUND


async def room_is_encrypted(upstream: Upstream, account: Account, room_id: str) -> bool:
    """What we know, or else what the server says; any doubt is an error, never 'no'."""
    if account.machine.is_room_encrypted(room_id):
        return True
    path = f"{V3}/rooms/{quote(room_id, safe='')}/state/m.room.encryption/"
    status, body = await call(upstream, account, "GET", path, attempts=2)
    if no_such_state(status, body):
        # Not cached: encryption may be switched on at any moment, and a stale "plain" would
        # send the next message in the clear. One GET per plain send is the price.
        return False
    if status != 200 or not isinstance(body, dict):
        raise homeserver_error(
            status, body, "Could not tell whether the room is encrypted; nothing was sent"
        )
    async with account.step() as step:
        step.machine.update_room_encryption(room_id, body)
    if not account.machine.is_room_encrypted(room_id):
        raise BadRequest(
            "The room uses an encryption algorithm e2eproxy does not support; nothing was sent",
        )
    return True


async def room_members(upstream: Upstream, account: Account, room_id: str) -> list[str]:
    """Joined and invited members, from the server when our view may be stale."""
    cached = account.cached_members(room_id)
    if cached is not None:
        return cached
    path = f"{V3}/rooms/{quote(room_id, safe='')}/members"
    status, body = await call(upstream, account, "GET", path, attempts=2)
    chunk = body.get("chunk") if isinstance(body, dict) else None
    if status != 200 or not isinstance(chunk, list):
        raise homeserver_error(status, body, "Could not list the room's members; nothing was sent")
    memberships = {
        e["state_key"]: e["content"]["membership"]
        for e in chunk
        if isinstance(e, dict)
        and isinstance(e.get("state_key"), str)
        and isinstance(e.get("content"), dict)
        and isinstance(e["content"].get("membership"), str)
    }
    async with account.step() as step:
        step.machine.update_room_members(room_id, memberships)
    members = [str(m) for m in account.machine.room_members(room_id)]
    account.set_members(room_id, members)
    return members


async def encrypt_for_room(
    upstream: Upstream,
    account: Account,
    room_id: str,
    event_type: str,
    content: dict[str, Any],
    txn_key: str,
) -> dict[str, Any]:
    """Share the room key, encrypt, and save the ciphertext under the txn before it is sent."""
    async with account.room_lock(room_id):
        for attempt in range(2):
            members = await room_members(upstream, account, room_id)
            await share_room_key(upstream, account, room_id, members)
            try:
                async with account.step() as step:
                    encrypted = step.machine.encrypt(room_id, event_type, content)
                    step.persist(txns={txn_key: {"room_id": room_id, "content": encrypted}})
                account.wake_backup()  # a new session of ours may wait for the key backup
            except LocalProtocolError:
                # The session rotated between sharing and encrypting: share the new one.
                if attempt:
                    raise
                continue
            return encrypted
    raise AssertionError("unreachable")


async def send_room_event(upstream: Upstream, account: Account, room_id: str,
                          event_type: str, content: dict[str, Any],
                          txn: str | None = None) -> tuple[int, Any]:
    """An event of the proxy's own (not the client's) into a room: encrypted where the room
    is, in the clear only where the server says it is not."""
    txn = txn or f"e2eproxy-{uuid.uuid4().hex}"
    if await room_is_encrypted(upstream, account, room_id):
        txn_key = f"own\0{room_id}\0{txn}"
        content = await encrypt_for_room(upstream, account, room_id, event_type, content,
                                         txn_key)
        event_type = "m.room.encrypted"
    path = (f"{V3}/rooms/{quote(room_id, safe='')}/send/{quote(event_type, safe='')}/"
            f"{quote(txn, safe='')}")
    return await call(upstream, account, "PUT", path, content)
