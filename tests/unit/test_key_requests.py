"""Room key requests: re-shared with a device the current session was shared with, from the index
it got, and with nobody else."""

from __future__ import annotations

from typing import Any

import vodozemac

from e2eproxy.crypto.olm import OlmDecrypted
from e2eproxy.protocol.api import RequestKind
from tests.support.machine_pair import Client, make_room

ROOM = "!room:test"


def _request(requester: Client, session_id: str, room_id: str = ROOM,
             action: str = "request") -> dict[str, Any]:
    return {
        "type": "m.room_key_request",
        "sender": requester.user_id,
        "content": {
            "action": action,
            "requesting_device_id": requester.device_id,
            "request_id": f"req-{session_id[:6]}",
            "body": {
                "algorithm": "m.megolm.v1.aes-sha2",
                "room_id": room_id,
                "sender_key": "ignored",
                "session_id": session_id,
            },
        },
    }


def _answers(sender: Client, event: dict[str, Any]) -> list[Any]:
    sender.machine.receive_sync({"to_device": {"events": [event]}})
    return [r for r in sender.machine.outgoing_requests() if r.kind is RequestKind.TO_DEVICE]


def test_a_device_that_had_the_key_gets_it_again_from_the_index_it_had() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    first = alice.send(ROOM, "one")
    second = alice.send(ROOM, "two")
    session_id = first["content"]["session_id"]
    [answer] = _answers(alice, _request(bob, session_id))
    repeated = _request(bob, session_id)
    repeated["content"]["request_id"] = "another-id"
    assert _answers(alice, repeated) == []  # once per device and session, whatever the id
    assert list(answer.body["messages"]) == [bob.user_id]
    assert list(answer.body["messages"][bob.user_id]) == [bob.device_id]
    alice.answer(answer)

    [event] = _forwarded_to(bob)
    content = event.content
    assert event.sender == alice.user_id
    assert event.sender_key == alice.machine.identity_keys["curve25519"]
    assert event.sender_ed25519 == alice.machine.identity_keys["ed25519"]
    assert (content["room_id"], content["session_id"]) == (ROOM, session_id)
    assert content["sender_claimed_ed25519_key"] == alice.machine.identity_keys["ed25519"]
    session = vodozemac.InboundGroupSession.import_session(
        vodozemac.ExportedSessionKey(content["session_key"])
    )
    assert session.first_known_index == 0  # bob got the session from its first message
    for event_sent, body in ((first, "one"), (second, "two")):
        message = vodozemac.MegolmMessage.from_base64(event_sent["content"]["ciphertext"])
        assert b'"body":"' + body.encode() in session.decrypt(message).plaintext


def _forwarded_to(client: Client) -> list[OlmDecrypted]:
    """The m.forwarded_room_key events waiting for `client`, Olm-decrypted with its sessions
    (its engine refuses them: they come from another user; here we look at what was sent)."""
    found = []
    for event in client.server.inbox.pop(client.key, []):
        assert event["type"] == "m.room.encrypted", event["type"]
        decrypted = client.machine._olm.decrypt(event)
        assert isinstance(decrypted, OlmDecrypted), decrypted
        if decrypted.event_type == "m.forwarded_room_key":
            found.append(decrypted)
    return found


def test_a_late_joiner_cannot_reach_earlier_messages_through_a_request() -> None:
    server, (alice, _bob) = make_room(ROOM, "alice", "bob")
    alice.send(ROOM, "before carol")
    carol = Client(server, "@carol:test", "CAROLDEV")
    carol.flush()
    server.set_membership(ROOM, carol.user_id, "join")
    alice.tick()
    carol.tick()
    later = alice.send(ROOM, "after carol")
    [answer] = _answers(alice, _request(carol, later["content"]["session_id"]))
    alice.answer(answer)
    [event] = _forwarded_to(carol)
    session = vodozemac.InboundGroupSession.import_session(
        vodozemac.ExportedSessionKey(event.content["session_key"])
    )
    assert session.first_known_index == 1


def test_requests_that_must_not_be_answered() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    sent = alice.send(ROOM, "hello")
    session_id = sent["content"]["session_id"]
    stranger = Client(server, "@mallory:test", "MALDEV")
    stranger.flush()
    alice.machine.receive_sync({"device_lists": {"changed": [stranger.user_id]}})
    assert _answers(alice, _request(stranger, session_id)) == []  # never shared with it
    assert _answers(alice, _request(bob, "c29tZSBvdGhlciBzZXNzaW9u")) == []  # not ours
    assert _answers(alice, _request(bob, session_id, room_id="!other:test")) == []
    assert _answers(alice, _request(bob, session_id, action="request_cancellation")) == []
    assert _answers(alice, {"type": "m.room_key_request", "sender": bob.user_id,
                            "content": {"action": "request", "body": "junk"}}) == []
