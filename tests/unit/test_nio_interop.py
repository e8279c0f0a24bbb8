"""Interop with matrix-nio's own Olm machine (an independent engine) through the fake router.

Both directions, Olm and Megolm: nio shares a room key with us and we decrypt its messages; we
share ours with nio and it decrypts ours.
"""

from __future__ import annotations

from typing import Any

from nio.crypto import Olm
from nio.events import MegolmEvent, RoomMessageText, ToDeviceEvent
from nio.responses import (
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
)
from nio.store import SqliteMemoryStore

from e2eproxy.crypto.results import Decrypted, SenderTrust
from e2eproxy.protocol import api
from tests.support.machine_pair import FakeServer, make_clients

NINA = "@nina:test"
NINA_DEVICE = "NINADEV"


class NioPeer:
    """matrix-nio's ``Olm`` machine wired to the fake server like our ``Client``."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.key = (NINA, NINA_DEVICE)
        self.olm = Olm(NINA, NINA_DEVICE, SqliteMemoryStore(NINA, NINA_DEVICE))
        upload = self.server.handle(self.key, api.keys_upload(self.olm.share_keys()))
        counts = {"curve25519": 0, **upload["one_time_key_counts"]}
        self.olm.handle_response(KeysUploadResponse.from_dict({"one_time_key_counts": counts}))

    def query(self, users: list[str]) -> None:
        response = self.server.handle(self.key, api.keys_query(users))
        self.olm.handle_response(KeysQueryResponse.from_dict(response))

    def claim(self, users: list[str]) -> None:
        missing = self.olm.get_missing_sessions(users)
        if missing:
            response = self.server.handle(self.key, api.keys_claim(missing))
            self.olm.handle_response(KeysClaimResponse.from_dict(response))

    def share(self, room_id: str, users: list[str]) -> None:
        self.query(users)
        self.claim(users)
        shared_with, to_device = self.olm.share_group_session(
            room_id, users, ignore_unverified_devices=True
        )
        self.server.handle(self.key, api.to_device("m.room.encrypted", to_device["messages"]))
        session = self.olm.outbound_group_sessions[room_id]
        session.users_shared_with.update(shared_with)
        session.shared = True

    def send(self, room_id: str, body: str) -> dict[str, Any]:
        content = self.olm.group_encrypt(
            room_id, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}}
        )
        return self.server.post_event(room_id, NINA, content)

    def receive_to_device(self) -> list[Any]:
        results = []
        for raw in self.server.inbox.pop(self.key, []):
            event = ToDeviceEvent.parse_encrypted_event(raw)
            results.append(self.olm.handle_to_device_event(event))
        return results

    def decrypt(self, room_id: str, event: dict[str, Any]) -> Any:
        return self.olm.decrypt_megolm_event(MegolmEvent.from_dict(event), room_id)


def test_nio_to_us_olm_and_megolm() -> None:
    server, (bob,) = make_clients("bob")
    nina = NioPeer(server)
    room = "!nio-to-us:test"
    server.create_room(room, NINA, [bob.user_id])
    bob.tick()  # bob tracks nina (member of an encrypted room) and queries her keys
    nina.share(room, [bob.user_id])
    first = nina.send(room, "hello from nio")
    second = nina.send(room, "second from nio")
    sync = bob.tick()
    assert [k.room_id for k in sync.room_keys] == [room]
    for event, body in ((first, "hello from nio"), (second, "second from nio")):
        result = bob.decrypt(room, event)
        assert isinstance(result, Decrypted), result
        assert result.event["content"]["body"] == body
        assert result.sender_device == NINA_DEVICE
        assert result.trust is SenderTrust.UNVERIFIED


def test_us_to_nio_olm_and_megolm() -> None:
    server, (bob,) = make_clients("bob")
    nina = NioPeer(server)
    room = "!us-to-nio:test"
    server.create_room(room, bob.user_id, [NINA])
    bob.tick()
    nina.query([bob.user_id])  # nio checks the sender device of room keys it receives
    first = bob.send(room, "hello nio")
    second = bob.send(room, "again, nio")
    received = nina.receive_to_device()
    assert any(type(r).__name__ == "RoomKeyEvent" for r in received), received
    for event, body in ((first, "hello nio"), (second, "again, nio")):
        decrypted = nina.decrypt(room, event)
        assert isinstance(decrypted, RoomMessageText), decrypted
        assert decrypted.body == body
    # and Olm in the other direction over the channel nio now holds: nio replies with a
    # room key of its own, which must use the existing session (no new claim needed)
    nina.share(room, [bob.user_id])
    reply = nina.send(room, "reply from nio")
    bob.tick()
    assert bob.read(room, reply) == "reply from nio"
