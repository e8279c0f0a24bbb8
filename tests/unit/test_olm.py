"""Olm to-device handling: de-duplication, payload checks, unwedging, fallback keys."""

from __future__ import annotations

import copy
import json
from typing import Any

import vodozemac

from e2eproxy.crypto.changes import OlmSessionRecord
from e2eproxy.protocol.api import RequestKind
from e2eproxy.protocol.canonical import b64encode, canonical_json
from tests.support.machine_pair import Client, FakeServer, make_clients, make_room

ROOM = "!room:test"


def _forge(server: FakeServer, target: Client, sender: str, payload: dict[str, Any],
           attacker: vodozemac.Account | None = None) -> dict[str, Any]:
    """An Olm to-device event from a raw vodozemac account, built by hand."""
    attacker = attacker or vodozemac.Account()
    otks = server.otks[target.key]
    key_id = next(iter(otks))
    otk = vodozemac.Curve25519PublicKey.from_base64(otks.pop(key_id)["key"])
    identity = vodozemac.Curve25519PublicKey.from_base64(
        target.machine.identity_keys["curve25519"]
    )
    session = attacker.create_outbound_session(identity, otk)
    message_type, body = session.encrypt(canonical_json(payload)).to_parts()
    return {
        "type": "m.room.encrypted", "sender": sender,
        "content": {
            "algorithm": "m.olm.v1.curve25519-aes-sha2",
            "sender_key": attacker.curve25519_key.to_base64(),
            "ciphertext": {target.machine.identity_keys["curve25519"]: {
                "type": message_type, "body": b64encode(body)}},
        },
    }


def _room_key_payload(target: Client, sender: str, ed25519: str, room: str = ROOM
                      ) -> dict[str, Any]:
    group = vodozemac.GroupSession()
    return {
        "sender": sender, "recipient": target.user_id,
        "recipient_keys": {"ed25519": target.machine.identity_keys["ed25519"]},
        "keys": {"ed25519": ed25519}, "type": "m.room_key",
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room,
                    "session_id": group.session_id,
                    "session_key": group.session_key.to_base64()},
    }


def test_duplicate_to_device_event_is_ignored() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice.share(ROOM)
    body = server.sync_body(bob.key)
    first = bob.machine.receive_sync(body)
    assert len(first.room_keys) == 1
    again = copy.deepcopy(body)
    again["next_batch"] = "other-token"  # the other sync stream saw the same event
    second = bob.machine.receive_sync(again)
    assert second.room_keys == [] and second.failures == []
    assert bob.machine.receive_sync(body).room_keys == []  # same body: idempotent


def test_forged_payloads_are_rejected_without_state_change() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    attacker = vodozemac.Account()
    ed = attacker.ed25519_key.to_base64()
    cases = {
        "wrong_recipient": {"recipient": "@carol:test"},
        "wrong_recipient_keys": {"recipient_keys": {"ed25519": ed}},
        "mismatched_sender": {"sender": "@mallory:test"},
    }
    for reason, override in cases.items():
        payload = {**_room_key_payload(bob, alice.user_id, ed), **override}
        event = _forge(server, bob, alice.user_id, payload, attacker)
        result = bob.machine.receive_sync({"to_device": {"events": [event]}})
        assert [f.reason for f in result.failures] == [reason]
        assert result.room_keys == []


def test_olm_claiming_a_known_device_with_other_keys_is_rejected() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    # the attacker claims to be alice but encrypts with its own Curve25519 key, and names
    # alice's Ed25519 key: the sender key is unknown, so the room key is bound to the
    # attacker's curve key and does not verify as alice.
    payload = _room_key_payload(bob, alice.user_id, alice.machine.identity_keys["ed25519"])
    event = _forge(server, bob, alice.user_id, payload)
    result = bob.machine.receive_sync({"to_device": {"events": [event]}})
    assert len(result.room_keys) == 1
    # and a message claiming alice's curve key cannot be decrypted at all
    event["content"]["sender_key"] = alice.machine.identity_keys["curve25519"]
    event["content"]["ciphertext"] = {bob.machine.identity_keys["curve25519"]: {
        "type": 0, "body": "AAAA"}}
    result = bob.machine.receive_sync({"to_device": {"events": [event]}})
    assert result.room_keys == [] and result.failures


def test_plaintext_room_key_and_foreign_olm_are_rejected() -> None:
    _server, (alice, bob, carol) = make_room(ROOM, "alice", "bob", "carol")
    alice.share(ROOM)
    for_carol = _server.inbox[carol.key][0]
    plain = {"type": "m.room_key", "sender": alice.user_id, "content": {
        "algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM, "session_id": "x",
        "session_key": "y"}}
    result = bob.machine.receive_sync({"to_device": {"events": [plain, for_carol]}})
    assert [f.reason for f in result.failures] == ["must_be_encrypted", "not_for_us"]
    assert result.room_keys == []


def test_olm_session_is_reused_after_first_message() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice.share(ROOM)
    claims = [r for _, r in server.requests if r.kind is RequestKind.KEYS_CLAIM]
    bob.tick()
    alice.machine.discard_room_key(ROOM)
    alice.share(ROOM)
    assert [r for _, r in server.requests if r.kind is RequestKind.KEYS_CLAIM] == claims
    assert len(bob.tick().room_keys) == 1


def test_wedged_session_is_recovered_once_per_hour() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice.send(ROOM, "first")
    bob.tick()
    bob.machine._olm._sessions.clear()  # bob loses his Olm state with alice
    alice.machine.discard_room_key(ROOM)
    server.clock.advance(1000)
    event = alice.send(ROOM, "second")
    result = bob.tick()  # undecryptable -> claim alice's key -> m.dummy
    assert result.failures and result.room_keys == []
    dummy_sent = [r for o, r in server.requests if o == bob.key and r.kind is RequestKind.TO_DEVICE]
    assert len(dummy_sent) == 1
    server.clock.advance(1000)
    alice.tick()  # alice gets the dummy over the new session
    server.clock.advance(1000)
    alice.machine.discard_room_key(ROOM)
    third = alice.send(ROOM, "third")
    bob.tick()
    assert bob.read(ROOM, third) == "third"
    assert bob.decrypt(ROOM, event).__class__.__name__ == "DecryptionFailure"
    # a second wedge within the hour does not trigger another recovery
    bob.machine._olm._sessions.clear()
    alice.machine.discard_room_key(ROOM)
    alice.send(ROOM, "fourth")
    bob.tick()
    assert len([r for o, r in server.requests
                if o == bob.key and r.kind is RequestKind.KEYS_CLAIM]) == 1


def test_otk_exhaustion_uses_fallback_then_replaces_it() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    old_fallback = dict(server.fallback[bob.key])
    server.otks[bob.key].clear()  # someone claimed every one-time key
    event = alice.send(ROOM, "via fallback")
    assert server.fallback_unused[bob.key] is False
    bob.tick()
    assert bob.read(ROOM, event) == "via fallback"
    assert server.fallback[bob.key] != old_fallback
    assert server.fallback_unused[bob.key] is True
    assert len(server.otks[bob.key]) == 25  # topped up to max/2


def test_keys_published_only_after_successful_upload() -> None:
    server = FakeServer(__import__("e2eproxy.crypto.clock", fromlist=["x"]).ManualClock())
    client = Client(server, "@dave:test", "DAVEDEV")
    first = [r for r in client.machine.outgoing_requests() if r.kind is RequestKind.KEYS_UPLOAD]
    assert len(first) == 1 and "device_keys" in first[0].body
    assert len(first[0].body["one_time_keys"]) == 25
    assert len(first[0].body["fallback_keys"]) == 1
    assert client.machine.outgoing_requests() == []  # not handed out twice while in flight
    client.machine.mark_request_as_failed(first[0].id, "boom")
    retry = [r for r in client.machine.outgoing_requests() if r.kind is RequestKind.KEYS_UPLOAD]
    assert retry[0].body["one_time_keys"] == first[0].body["one_time_keys"]
    assert retry[0].body["device_keys"] == first[0].body["device_keys"]
    client.answer(retry[0])
    later = [r for r in client.machine.outgoing_requests() if r.kind is RequestKind.KEYS_UPLOAD]
    assert later == []
    # signed device keys verify and carry no unsigned data
    keys = client.machine.device_keys()
    from e2eproxy.protocol.canonical import verify_json

    assert verify_json(keys, "@dave:test", "ed25519:DAVEDEV", keys["keys"]["ed25519:DAVEDEV"])
    assert json.loads(json.dumps(keys)) == keys


def test_fallback_key_rotated_weekly() -> None:
    server, (alice,) = make_clients("alice")
    before = dict(server.fallback[alice.key])
    server.clock.advance(7 * 24 * 3600 * 1000)
    alice.tick()
    assert server.fallback[alice.key] != before


def test_one_time_key_kept_when_pre_key_message_fails() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    alice.share(ROOM)
    genuine = server.inbox.pop(bob.key)[0]
    broken = copy.deepcopy(genuine)
    entry = next(iter(broken["content"]["ciphertext"].values()))
    assert entry["type"] == 0
    body = entry["body"]
    entry["body"] = body[:-20] + ("A" if body[-20] != "A" else "B") + body[-19:]  # bad MAC
    result = bob.machine.receive_sync({"to_device": {"events": [broken]}})
    assert result.room_keys == [] and result.failures
    result = bob.machine.receive_sync({"to_device": {"events": [genuine]}})
    assert len(result.room_keys) == 1  # the one-time key was still there


def test_device_without_keys_gets_no_olm_once() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    server.otks[bob.key].clear()
    server.fallback[bob.key] = {}
    requests = alice.share(ROOM)
    withheld = [r for r in requests if "m.room_key.withheld" in r.path]
    assert len(withheld) == 1
    content = withheld[0].body["messages"][bob.user_id][bob.device_id]
    assert content["code"] == "m.no_olm" and "session_id" not in content
    alice.machine.discard_room_key(ROOM)
    again = alice.share(ROOM)  # the claim failure is backed off; no second notice
    assert [r for r in again if "withheld" in r.path] == []


def test_claimed_key_with_forged_signature_is_not_used() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    forged_key = vodozemac.Account().curve25519_key.to_base64()
    for otk in server.otks[bob.key].values():
        otk["key"] = forged_key  # signatures no longer match
    server.fallback[bob.key] = {}
    requests = alice.share(ROOM)
    assert [r for r in requests if "m.room.encrypted" in r.path] == []
    (withheld,) = [r for r in requests if "withheld" in r.path]
    assert withheld.body["messages"][bob.user_id][bob.device_id]["code"] == "m.no_olm"


def test_olm_sessions_per_device_are_capped_least_recently_used_first() -> None:
    """Anyone can open Olm sessions with us (a pre-key message with one of our one-time keys):
    a device keeps at most five, the least recently used expired, in the store too."""
    server, (bob,) = make_clients("bob")
    peer = vodozemac.Account()
    peer_key = peer.curve25519_key.to_base64()
    payload = _room_key_payload(bob, "@peer:test", peer.ed25519_key.to_base64())
    for _ in range(8):
        server.clock.advance(1000)
        event = _forge(server, bob, "@peer:test", payload, peer)
        bob.machine.receive_sync({"to_device": {"events": [event]}})
    bob.persist()
    kept = bob.machine._olm._sessions[peer_key]
    assert len(kept) == 5
    assert [s.created_ms for s in kept] == sorted(s.created_ms for s in kept)
    assert min(s.created_ms for s in kept) == max(s.created_ms for s in kept) - 4000, (
        "the five most recent"
    )
    stored = [r for r in bob.store.tables["olm"].values() if r.sender_key == peer_key]
    assert {r.session_id for r in stored} == {s.session_id for s in kept}

    # A store written before the cap, with more: the extra ones go at restore, there too.
    for number in range(3):
        other = vodozemac.Account()
        other.generate_one_time_keys(1)
        session = peer.create_outbound_session(
            other.curve25519_key, next(iter(other.one_time_keys.values()))
        )
        bob.store.tables["olm"][session.session_id] = OlmSessionRecord(
            peer_key, session.session_id, session, number, number, number
        )
    bob.restart()
    bob.persist()
    assert len(bob.machine._olm._sessions[peer_key]) == 5
    assert len([r for r in bob.store.tables["olm"].values() if r.sender_key == peer_key]) == 5


def test_a_stale_sync_does_not_rotate_the_fallback_key_twice() -> None:
    """Once the used fallback key is replaced, a sync asked for before that upload (answered
    before the server had it) still says "no unused fallback key": that must not replace the
    new key too (peers that claimed it would be left with a key we no longer hold)."""
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    server.otks[bob.key].clear()
    alice.send(ROOM, "via the fallback key")
    assert server.fallback_unused[bob.key] is False
    asked_before_upload = bob.machine.key_uploads
    stale = server.sync_body(bob.key)  # built now, before bob replaced the key
    bob.tick()  # the fallback key is replaced: once
    replaced = dict(server.fallback[bob.key])
    bob.machine.receive_sync(stale, key_uploads_at_request=asked_before_upload)
    bob.flush()
    assert server.fallback[bob.key] == replaced

    # A report that arrives while the replacement is on its way, whose upload then fails,
    # must not make a second key either: the unpublished one is sent again.
    server.fallback_unused[bob.key] = False  # someone claimed the new one too
    bob.sync()
    [upload] = [r for r in bob.machine.outgoing_requests() if r.kind is RequestKind.KEYS_UPLOAD]
    bob.machine.receive_sync(server.sync_body(bob.key),
                             key_uploads_at_request=bob.machine.key_uploads)
    bob.machine.mark_request_as_failed(upload.id, "boom")
    [retry] = [r for r in bob.machine.outgoing_requests() if r.kind is RequestKind.KEYS_UPLOAD]
    assert retry.body["fallback_keys"] == upload.body["fallback_keys"]
    bob.answer(retry)
    bob.flush()
    assert server.fallback[bob.key] == upload.body["fallback_keys"]
    # A sync asked for after the upload, saying the key is used, rotates it as before.
    server.fallback_unused[bob.key] = False
    bob.machine.receive_sync(server.sync_body(bob.key),
                             key_uploads_at_request=bob.machine.key_uploads)
    bob.flush()
    assert server.fallback[bob.key] != upload.body["fallback_keys"]


def test_a_sync_asked_for_before_an_engine_rebuild_is_still_known_stale() -> None:
    """The shell may rebuild an account's engine from the store (after a failed commit)
    between a sync request and its answer: the new engine still knows the body is older than
    its upload."""
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    server.otks[bob.key].clear()
    alice.send(ROOM, "via the fallback key")
    asked_before_upload = bob.machine.key_uploads
    stale = server.sync_body(bob.key)
    bob.restart()
    server.fallback_unused[bob.key] = False
    bob.tick()  # the new engine replaces the used key
    replaced = dict(server.fallback[bob.key])
    bob.machine.receive_sync(stale, key_uploads_at_request=asked_before_upload)
    bob.flush()
    assert server.fallback[bob.key] == replaced
