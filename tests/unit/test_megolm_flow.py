"""Two and three engines through the fake router: sharing, rotation, late joiners, replay."""

from __future__ import annotations

import json

import pytest
import vodozemac

from e2eproxy.crypto.changes import InboundGroupSessionRecord
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.crypto.settings import LocalTrust, SharingStrategy
from e2eproxy.errors import LocalProtocolError
from e2eproxy.protocol.api import RequestKind
from e2eproxy.types import RoomId, SessionId
from tests.support.machine_pair import Client, make_clients, make_room

ROOM = "!room:test"


def test_first_message_in_new_room() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    bob.tick()
    assert alice.machine.is_room_encrypted(ROOM)
    event = alice.send(ROOM, "hello bob")
    assert "hello" not in str(event["content"])
    bob.tick()
    result = bob.decrypt(ROOM, event)
    assert isinstance(result, Decrypted)
    assert result.event["content"]["body"] == "hello bob"
    assert result.event["type"] == "m.room.message"
    assert result.event["event_id"] == event["event_id"]
    assert result.event["sender"] == alice.user_id
    assert result.sender_device == alice.device_id


def test_encrypt_before_share_is_an_error() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    with pytest.raises(LocalProtocolError):
        alice.machine.encrypt(ROOM, "m.room.message", {"body": "x"})


def test_encrypt_in_unencrypted_room_is_an_error() -> None:
    _server, (alice,) = make_clients("alice")
    with pytest.raises(LocalProtocolError):
        alice.machine.share_room_key("!plain:test", [alice.user_id])
    with pytest.raises(LocalProtocolError):
        alice.machine.encrypt("!plain:test", "m.room.message", {"body": "x"})


def test_three_members_all_decrypt_and_session_is_reused() -> None:
    _server, (alice, bob, carol) = make_room(ROOM, "alice", "bob", "carol")
    first = alice.send(ROOM, "one")
    second = alice.send(ROOM, "two")
    assert first["content"]["session_id"] == second["content"]["session_id"]
    for reader in (bob, carol):
        reader.tick()
        assert reader.read(ROOM, first) == "one"
        assert reader.read(ROOM, second) == "two"


def test_late_joiner_gets_current_index_only() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    early = alice.send(ROOM, "before carol")
    bob.tick()
    assert bob.read(ROOM, early) == "before carol"
    carol = Client(server, "@carol:test", "CAROLDEV")
    carol.flush()
    server.set_membership(ROOM, carol.user_id, "join")
    for client in (alice, bob, carol):
        client.tick()
    late = alice.send(ROOM, "after carol")
    assert late["content"]["session_id"] == early["content"]["session_id"]
    carol.tick()
    bob.tick()
    assert carol.read(ROOM, late) == "after carol"
    assert bob.read(ROOM, late) == "after carol"
    failure = carol.decrypt(ROOM, early)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.UNKNOWN_MESSAGE_INDEX


def test_member_leaves_rotation_and_leaver_cannot_decrypt() -> None:
    server, (alice, bob, carol) = make_room(ROOM, "alice", "bob", "carol")
    before = alice.send(ROOM, "all three")
    server.set_membership(ROOM, carol.user_id, "leave")
    for client in (alice, bob, carol):
        client.tick()
    after = alice.send(ROOM, "without carol")
    assert after["content"]["session_id"] != before["content"]["session_id"]
    bob.tick()
    carol.tick()
    assert bob.read(ROOM, after) == "without carol"
    failure = carol.decrypt(ROOM, after)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.MISSING_SESSION
    assert carol.read(ROOM, before) == "all three"


def test_new_device_of_member_receives_key() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice.send(ROOM, "warm up")
    bob2 = Client(server, bob.user_id, "BOBPHONE")
    bob2.flush()
    alice.tick()  # device_lists.changed for bob -> re-query -> new device
    event = alice.send(ROOM, "hello both bobs")
    bob.tick()
    bob2.tick()
    assert bob.read(ROOM, event) == "hello both bobs"
    assert bob2.read(ROOM, event) == "hello both bobs"


def test_blacklisted_device_gets_withheld_and_rotation() -> None:
    _server, (alice, bob, carol) = make_room(ROOM, "alice", "bob", "carol")
    before = alice.send(ROOM, "everyone")
    alice.machine.set_local_trust(carol.user_id, carol.device_id, LocalTrust.BLACKLISTED)
    after = alice.send(ROOM, "not carol")
    assert after["content"]["session_id"] != before["content"]["session_id"]
    bob.tick()
    sync = carol.tick()
    assert bob.read(ROOM, after) == "not carol"
    assert (ROOM, after["content"]["session_id"], "m.blacklisted") in sync.withheld
    failure = carol.decrypt(ROOM, after)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.MISSING_SESSION
    assert failure.withheld_code == "m.blacklisted"


def test_only_verified_strategy_withholds_unverified() -> None:
    _server, (alice, bob, carol) = make_room(ROOM, "alice", "bob", "carol")
    alice.machine.set_sharing_strategy(SharingStrategy.ONLY_VERIFIED)
    alice.machine.set_local_trust(bob.user_id, bob.device_id, LocalTrust.VERIFIED)
    event = alice.send(ROOM, "verified only")
    bob.tick()
    carol.tick()
    assert bob.read(ROOM, event) == "verified only"
    failure = carol.decrypt(ROOM, event)
    assert isinstance(failure, DecryptionFailure)
    assert failure.withheld_code == "m.unverified"


def test_rotation_by_message_count() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id],
                       {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 3})
    alice.tick()
    bob.tick()
    events = [alice.send(ROOM, f"m{i}") for i in range(4)]
    sessions = [e["content"]["session_id"] for e in events]
    assert sessions[0] == sessions[1] == sessions[2] != sessions[3]
    bob.tick()
    assert [bob.read(ROOM, e) for e in events] == ["m0", "m1", "m2", "m3"]


def test_rotation_by_time() -> None:
    clock = ManualClock()
    server, (alice, bob) = make_clients("alice", "bob", clock=clock)
    server.create_room(ROOM, alice.user_id, [bob.user_id],
                       {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": 7_200_000})
    alice.tick()
    bob.tick()
    first = alice.send(ROOM, "now")
    clock.advance(7_199_000)
    same = alice.send(ROOM, "soon")
    clock.advance(2_000)
    with pytest.raises(LocalProtocolError):
        alice.machine.encrypt(ROOM, "m.room.message", {"body": "expired"})
    later = alice.send(ROOM, "later")
    assert first["content"]["session_id"] == same["content"]["session_id"]
    assert later["content"]["session_id"] != first["content"]["session_id"]
    bob.tick()
    assert bob.read(ROOM, later) == "later"


def test_history_visibility_change_rotates() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    first = alice.send(ROOM, "a")
    alice.machine.update_history_visibility(ROOM, "joined")
    second = alice.send(ROOM, "b")
    assert first["content"]["session_id"] != second["content"]["session_id"]
    bob.tick()
    assert bob.read(ROOM, second) == "b"


def test_a_history_visibility_not_understood_is_the_most_restrictive() -> None:
    """An invitee gets the room key while the history is shared; a value the spec does not
    define (or no string at all) counts as ``joined``, not as ``shared``: no key for invitees,
    none marked as shareable history. Also for such a value already in the store."""
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice.machine.update_room_members(ROOM, {"@carol:test": "invite"})
    assert "@carol:test" in alice.machine.room_members(ROOM)
    for value in ("org.example.members_only", None, ["shared"]):
        alice.machine.update_history_visibility(ROOM, "shared")
        alice.machine.receive_sync({"rooms": {"join": {ROOM: {"timeline": {"events": [{
            "type": "m.room.history_visibility", "state_key": "", "sender": bob.user_id,
            "event_id": "$hv", "content": {"history_visibility": value},
        }]}}}}})
        assert "@carol:test" not in alice.machine.room_members(ROOM), value
        settings = alice.machine.room_encryption_settings(ROOM)
        assert settings is not None and not settings.shared_history
    alice.persist()
    alice.store.tables["room"][ROOM].history_visibility = "org.example.members_only"
    alice.restart()
    assert "@carol:test" not in alice.machine.room_members(ROOM)


def test_replay_rejected_but_same_event_twice_is_fine() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    event = alice.send(ROOM, "once")
    bob.tick()
    assert bob.read(ROOM, event) == "once"
    assert bob.read(ROOM, event) == "once"
    replay = dict(event, event_id="$forged", origin_server_ts=event["origin_server_ts"] + 5)
    failure = bob.decrypt(ROOM, replay)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.REPLAYED


def test_room_mismatch_rejected() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    outbound = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(outbound.session_key)
    record = InboundGroupSessionRecord(
        RoomId(ROOM), SessionId(outbound.session_id), alice.machine.identity_keys["curve25519"],
        alice.machine.identity_keys["ed25519"], inbound, imported=False, shared_history=False,
        first_known_index=0,
    )
    bob.machine.load_inbound_group_sessions([record])
    payload = {"type": "m.room.message", "content": {"body": "x"}, "room_id": "!other:test"}
    ciphertext = outbound.encrypt(json.dumps(payload).encode()).to_base64()
    event = {
        "type": "m.room.encrypted", "sender": alice.user_id, "event_id": "$x",
        "origin_server_ts": 1, "content": {
            "algorithm": "m.megolm.v1.aes-sha2", "session_id": outbound.session_id,
            "ciphertext": ciphertext, "sender_key": "x", "device_id": "y",
        },
    }
    failure = bob.decrypt(ROOM, event)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.ROOM_MISMATCH


def test_relates_to_copied_and_bundled_edit_decrypted() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    original = alice.send(ROOM, "orig")
    relation = {"rel_type": "m.replace", "event_id": original["event_id"]}
    edit = alice.send(ROOM, "* edited", **{"m.relates_to": relation})
    assert edit["content"]["m.relates_to"] == relation
    bob.tick()
    bundled = dict(original, unsigned={"m.relations": {"m.replace": edit}})
    result = bob.decrypt(ROOM, bundled)
    assert isinstance(result, Decrypted)
    inner = result.event["unsigned"]["m.relations"]["m.replace"]
    assert inner["type"] == "m.room.message"
    assert inner["content"]["body"] == "* edited"
    # the outer relation is copied into the plaintext when the inner one lacks it
    stripped = alice.machine.encrypt(ROOM, "m.reaction", {"key": "x"})
    stripped["m.relates_to"] = relation
    posted = _server.post_event(ROOM, alice.user_id, stripped)
    reaction = bob.decrypt(ROOM, posted)
    assert isinstance(reaction, Decrypted)
    assert reaction.event["content"]["m.relates_to"] == relation


def test_key_share_batches_to_device_requests() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    for i in range(259):
        Client(server, bob.user_id, f"BOB{i:03d}").flush()
    alice.tick()
    requests = [r for r in alice.share(ROOM) if "m.room.encrypted" in r.path]
    sizes = [sum(len(d) for d in r.body["messages"].values()) for r in requests]
    assert sorted(sizes) == [10, 250]
    assert all(r.kind is RequestKind.TO_DEVICE and r.method == "PUT" for r in requests)
    assert requests[0].path == (
        f"/_matrix/client/v3/sendToDevice/m.room.encrypted/{requests[0].id}"
    )


def test_thread_latest_event_decrypted_too() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    root = alice.send(ROOM, "root")
    reply = alice.send(ROOM, "in thread", **{"m.relates_to": {
        "rel_type": "m.thread", "event_id": root["event_id"]}})
    bob.tick()
    bundled = dict(root, unsigned={"m.relations": {"m.thread": {
        "latest_event": reply, "count": 1, "current_user_participated": False}}})
    result = bob.decrypt(ROOM, bundled)
    assert isinstance(result, Decrypted)
    thread = result.event["unsigned"]["m.relations"]["m.thread"]
    assert thread["latest_event"]["content"]["body"] == "in thread"
    assert thread["count"] == 1
    assert bundled["unsigned"]["m.relations"]["m.thread"]["latest_event"] is reply  # untouched


def test_room_state_from_invite_and_leave_sections() -> None:
    _server, (alice,) = make_clients("alice")
    encryption = {"type": "m.room.encryption", "state_key": "",
                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    member = {"type": "m.room.member", "state_key": "@zed:test",
              "content": {"membership": "join"}}
    alice.machine.receive_sync({"rooms": {
        "invite": {"!inv:test": {"invite_state": {"events": [encryption, member]}}},
        "leave": {"!left:test": {"timeline": {"events": [encryption]}}},
    }})
    assert alice.machine.is_room_encrypted("!inv:test")
    assert alice.machine.is_room_encrypted("!left:test")
    assert alice.machine.room_members("!inv:test") == ["@zed:test"]
    queries = [r for r in alice.machine.outgoing_requests() if r.kind is RequestKind.KEYS_QUERY]
    assert any("@zed:test" in r.body["device_keys"] for r in queries)
    settings = alice.machine.room_encryption_settings("!inv:test")
    assert settings is not None and settings.rotation_period_msgs == 100


def test_withheld_notices_remembered_for_a_bounded_number_of_sessions() -> None:
    """Each withheld notice goes once per session and device; for a proxy running for months,
    the memory of which went out is bounded (the oldest sessions are forgotten first)."""
    from types import SimpleNamespace
    from typing import Any, cast

    from e2eproxy.crypto.key_share import MAX_WITHHELD_SESSIONS, KeySharer

    sharer = KeySharer(*(cast(Any, None),) * 7)
    device = cast(Any, SimpleNamespace(user_id="@bob:test", device_id="BOBDEV"))

    def session(number: int) -> Any:
        return SimpleNamespace(session=SimpleNamespace(session_id=f"s{number}"))

    assert sharer._note_withheld(session(0), device)
    assert not sharer._note_withheld(session(0), device)  # once per session and device
    for number in range(1, MAX_WITHHELD_SESSIONS + 10):
        assert sharer._note_withheld(session(number), device)
    assert len(sharer._withheld_sent) == MAX_WITHHELD_SESSIONS
    assert not sharer._note_withheld(session(MAX_WITHHELD_SESSIONS + 5), device)


def _withheld_notice(
    event_type: str, sender: str, sender_key: str, session_id: str
) -> dict[str, object]:
    return {"to_device": {"events": [{
        "type": event_type,
        "sender": sender,
        "content": {
            "algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM, "session_id": session_id,
            "sender_key": sender_key, "code": "m.unverified", "reason": "not verified",
        },
    }]}}


def test_withheld_under_its_older_unstable_name_is_understood() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    event = alice.send(ROOM, "still on its way to bob")
    alice_key = alice.machine.identity_keys["curve25519"]
    bob.machine.receive_sync(_withheld_notice(
        "org.matrix.room_key.withheld", alice.user_id, alice_key, event["content"]["session_id"]
    ))
    failure = bob.decrypt(ROOM, event)
    assert isinstance(failure, DecryptionFailure)
    assert failure.withheld_code == "m.unverified"


def test_withheld_notice_counts_only_from_the_device_whose_key_it_names() -> None:
    """Anyone can send a plaintext notice naming any session: Mallory's, in Alice's name (her
    Curve25519 key), must not make Bob's proxy call Alice's message withheld (nor stop waiting
    for its key); Alice's own notice does."""
    _server, (alice, bob, mallory) = make_room(ROOM, "alice", "bob", "mallory")
    event = alice.send(ROOM, "still on its way to bob")
    session_id = event["content"]["session_id"]
    alice_key = alice.machine.identity_keys["curve25519"]
    forged = bob.machine.receive_sync(
        _withheld_notice("m.room_key.withheld", mallory.user_id, alice_key, session_id)
    )
    assert forged.withheld == []
    failure = bob.decrypt(ROOM, event)
    assert isinstance(failure, DecryptionFailure)
    assert (failure.reason, failure.withheld_code) == (FailureReason.MISSING_SESSION, None)

    genuine = bob.machine.receive_sync(
        _withheld_notice("m.room_key.withheld", alice.user_id, alice_key, session_id)
    )
    assert genuine.withheld == [(ROOM, session_id, "m.unverified")]
    # The key itself still wins over any notice once it arrives.
    bob.tick()
    assert bob.read(ROOM, event) == "still on its way to bob"
