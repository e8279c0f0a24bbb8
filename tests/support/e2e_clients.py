"""The plain side of the real-Synapse tiers (e2e, interop): a user behind the proxy, next to
matrix-nio or js peers.

`Plain` is one PlainClient logged in through the proxy that keeps what its /syncs showed, per
room (timeline, invites, to-device events, device list changes), and waits with the tier's
deadline; `register_and_login` (a bare PlainClient), `plain_login` and `plain_with_peer_room` set
a conversation up; `decrypted_message` checks an event as the plain client must get it; `show`
prints JSON whole in assertion messages.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support.nio_peer import NioPeer, PeerFactory
from tests.support.plain_client import PlainClient, q
from tests.support.synapse import SynapseServer
from tests.support.wire import encryption_state

POLL_MS = 300
TIMEOUT = 15.0


class Plain:
    """A plain client behind the proxy that keeps what its /syncs showed, per room."""

    def __init__(self, client: PlainClient) -> None:
        self.client = client
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.invites: set[str] = set()
        self.to_device: list[dict[str, Any]] = []
        self.devices_changed: set[str] = set()

    @property
    def user_id(self) -> str:
        assert self.client.user_id, "not logged in"
        return self.client.user_id

    @property
    def device_id(self) -> str:
        assert self.client.device_id, "not logged in"
        return self.client.device_id

    def room_path(self, room_id: str, tail: str, version: str = "v3") -> str:
        return f"/_matrix/client/{version}/rooms/{q(room_id)}/{tail}"

    async def sync_once(self, timeout_ms: int = POLL_MS) -> dict[str, Any]:
        answer = await self.client.sync(timeout_ms=timeout_ms)
        rooms = answer.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            self.timeline.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
        self.invites.update(rooms.get("invite", {}))
        self.to_device.extend(answer.get("to_device", {}).get("events", []))
        self.devices_changed.update(answer.get("device_lists", {}).get("changed", []))
        return answer

    async def sync_until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.user_id}: {what} not seen within {TIMEOUT} s")
            await self.sync_once(max(1, min(POLL_MS, int(left * 1000))))

    def event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        return next((e for e in self.timeline.get(room_id, []) if e["event_id"] == event_id), None)

    async def wait_for_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        try:
            await self.sync_until(lambda: self.event(room_id, event_id) is not None, event_id)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; timeline: {show(self.timeline.get(room_id))}") from None
        found = self.event(room_id, event_id)
        assert found is not None
        return found

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], txn: str | None = None
    ) -> str:
        txn = txn or f"e2ee-{uuid.uuid4().hex}"
        path = self.room_path(room_id, f"send/{q(event_type)}/{txn}")
        answer = await self.client.call("PUT", path, content)
        return str(answer["event_id"])

    async def send_text(self, room_id: str, body: str, txn: str | None = None) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}, txn)

    async def create_encrypted_room(self, **body: Any) -> str:
        rotation = body.pop("rotation_period_msgs", None)
        body.setdefault("preset", "private_chat")
        body["initial_state"] = [encryption_state(rotation)]
        return await self.client.create_room(**body)

    async def join_when_invited(self, room_id: str) -> None:
        await self.sync_until(lambda: room_id in self.invites, f"invite to {room_id}")
        assert await self.client.join_by_id_or_alias(room_id) == room_id


async def register_and_login(
    session: aiohttp.ClientSession, base_url: str, synapse: SynapseServer, localpart: str
) -> PlainClient:
    """Register the user on Synapse (password "<localpart>-password"), then log in with it
    through `base_url` (the proxy)."""
    password = f"{localpart}-password"
    await synapse.register(localpart, password=password)
    client = PlainClient(session, base_url)
    await client.login(localpart, password)
    return client


async def plain_login(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> Plain:
    """Register the user on Synapse, then log in with a password through the proxy."""
    return Plain(await register_and_login(session, proxy_url, synapse, localpart))


async def plain_with_peer_room(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
    **room: Any,
) -> tuple[Plain, NioPeer, str]:
    """A plain user logged in through the proxy creates an encrypted room; a nio peer joins."""
    plain = await plain_login(session, proxy_url, synapse, f"{localpart}plain")
    peer = await nio_peers(f"{localpart}nio")
    room_id = await plain.create_encrypted_room(invite=[peer.user_id], **room)
    await peer.join(room_id)
    return plain, peer, room_id


def show(value: Any) -> str:
    """Assertion messages as full JSON (pytest would shorten a dict's repr)."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def decrypted_message(event: dict[str, Any] | None, body: str, sender: str) -> None:
    """A timeline event as the plain client must get it: the plain m.room.message."""
    assert event is not None
    assert event["type"] == "m.room.message", f"not decrypted for the plain client: {show(event)}"
    assert event["content"].get("body") == body, show(event)
    assert event["sender"] == sender, show(event)
    assert "ciphertext" not in event["content"], show(event)
