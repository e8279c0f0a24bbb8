"""Withheld notices received: only a sender's own device may explain its own messages, and a
flood of notices cannot grow what is kept without end."""

from __future__ import annotations

from typing import Any

from e2eproxy.crypto.results import DecryptionFailure, FailureReason
from tests.support.machine_pair import make_room

ROOM = "!room:test"
# e2eproxy.crypto.withheld.MAX_NOTICES: how many notices an account keeps.
KEPT = 10_000


def _notice(sender: str, sender_key: str, session_id: str, *, room: str = ROOM,
            code: str = "m.unverified") -> dict[str, Any]:
    return {
        "type": "m.room_key.withheld", "sender": sender,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room,
                    "session_id": session_id, "sender_key": sender_key, "code": code,
                    "reason": "not verified"},
    }


def _sync(*events: dict[str, Any]) -> dict[str, Any]:
    return {"to_device": {"events": list(events)}}


def _withheld_code(result: object) -> str | None:
    assert isinstance(result, DecryptionFailure), result
    assert result.reason is FailureReason.MISSING_SESSION
    return result.withheld_code


def test_a_members_own_notice_does_not_mark_another_senders_message() -> None:
    """Mallory sends a notice with her *own* key (so it passes as hers) naming the session of
    Alice's message: it must not make Alice's message show as withheld."""
    _server, (alice, bob, mallory) = make_room(ROOM, "alice", "bob", "mallory")
    event = alice.send(ROOM, "still on its way to bob")
    session_id = event["content"]["session_id"]
    mallory_key = mallory.machine.identity_keys["curve25519"]
    bob.machine.receive_sync(_sync(_notice(mallory.user_id, mallory_key, session_id)))
    assert _withheld_code(bob.decrypt(ROOM, event)) is None
    # The same notice from Alice's own device explains it.
    alice_key = alice.machine.identity_keys["curve25519"]
    bob.machine.receive_sync(_sync(_notice(alice.user_id, alice_key, session_id)))
    assert _withheld_code(bob.decrypt(ROOM, event)) == "m.unverified"
    # ...but not an event of that session under another sender, nor naming another key.
    as_mallory = {**event, "sender": mallory.user_id}
    assert _withheld_code(bob.decrypt(ROOM, as_mallory)) is None
    other_key = {**event, "content": {**event["content"], "sender_key": mallory_key}}
    assert _withheld_code(bob.decrypt(ROOM, other_key)) is None


def test_a_notice_over_olm_must_name_the_key_it_came_with() -> None:
    """Encrypted, a notice's Olm channel proves its device: its ``sender_key`` must be that
    device's, not another device of the same user."""
    _server, (alice, alice2, bob) = make_room(ROOM, "alice", "alice/ALICE2", "bob")
    event = alice2.send(ROOM, "from alice's second device")  # its key stays in bob's inbox
    alice.send(ROOM, "opens an Olm session from alice's first device to bob")
    bob_device = alice.machine._devices.get(bob.user_id, bob.device_id)
    assert bob_device is not None
    session_id = event["content"]["session_id"]
    naming_other = _notice(alice.user_id, alice2.machine.identity_keys["curve25519"], session_id)
    naming_own = _notice(alice.user_id, alice.machine.identity_keys["curve25519"], session_id)
    for notice, kept in ((naming_other, False), (naming_own, True)):
        encrypted = alice.machine._olm.encrypt(bob_device, notice["type"], notice["content"])
        assert encrypted is not None
        result = bob.machine.receive_sync(_sync(
            {"type": "m.room.encrypted", "sender": alice.user_id, "content": encrypted}
        ))
        assert result.failures == []
        assert result.withheld == ([(ROOM, session_id, "m.unverified")] if kept else [])


def test_notices_kept_are_bounded_and_forgotten_in_the_store() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice_key = alice.machine.identity_keys["curve25519"]
    flood = [_notice(alice.user_id, alice_key, f"session{n:05}") for n in range(KEPT + 30)]
    result = bob.machine.receive_sync(_sync(*flood))
    bob.persist()
    assert len(result.withheld) == KEPT + 30
    stored = bob.store.tables["withheld"]
    assert len(stored) == KEPT
    assert {key[1] for key in stored} == {f"session{n:05}" for n in range(30, KEPT + 30)}, (
        "the oldest are forgotten first"
    )
    bob.restart()
    assert len(bob.machine._withheld) == KEPT
    # Fields no notice has: an oversized code, a room id that is not one.
    oversized = _notice(alice.user_id, alice_key, "big", code="x" * 10_000)
    not_a_room = _notice(alice.user_id, alice_key, "nowhere", room="room-without-sigil")
    assert bob.machine.receive_sync(_sync(oversized, not_a_room)).withheld == []


def test_the_key_arriving_after_its_notice_deletes_the_notice() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    event = alice.send(ROOM, "late key")
    session_id = event["content"]["session_id"]
    alice_key = alice.machine.identity_keys["curve25519"]
    bob.machine.receive_sync(_sync(_notice(alice.user_id, alice_key, session_id)))
    bob.persist()
    assert (ROOM, session_id) in bob.store.tables["withheld"]
    bob.tick()
    assert bob.read(ROOM, event) == "late key"
    assert (ROOM, session_id) not in bob.store.tables["withheld"]
