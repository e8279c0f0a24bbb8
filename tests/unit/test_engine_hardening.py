"""Attacks a hostile user or server can try on the engine: a message put under another sender,
a device copying someone's Curve25519 key, an unwedging request naming someone else's device,
and bundled relations of an odd shape."""

from __future__ import annotations

import base64
import copy
from typing import Any

import vodozemac

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.protocol.api import RequestKind
from tests.support.machine_pair import Client, make_room

ROOM = "!room:test"


def test_message_under_another_sender_is_refused() -> None:
    _server, (alice, bob, mallory) = make_room(ROOM, "alice", "bob", "mallory")
    event = alice.send(ROOM, "alice wrote this")
    bob.tick()
    forged = dict(event, sender=mallory.user_id, event_id="$forged")
    failure = bob.decrypt(ROOM, forged)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.SENDER_MISMATCH
    # The genuine event still decrypts (the forgery did not use up its index).
    assert bob.read(ROOM, event) == "alice wrote this"


def test_a_device_copying_another_curve25519_key_is_rejected() -> None:
    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    mallory = Client(server, "@mallory:test", "EVIL")
    mallory.flush()
    keys = copy.deepcopy(server.device_keys[mallory.user_id]["EVIL"])
    alice_curve = alice.machine.identity_keys["curve25519"]
    keys["keys"]["curve25519:EVIL"] = alice_curve
    # Re-sign as Mallory would: it is a valid self-signed device of Mallory's own.
    keys.pop("signatures")
    keys = mallory.machine._account.sign_json(keys)
    server.device_keys[mallory.user_id]["EVIL"] = keys
    bob.machine.receive_sync({"device_lists": {"changed": [mallory.user_id]}})
    server.set_membership(ROOM, mallory.user_id, "join")
    bob.tick()
    owner = bob.machine._devices.by_curve25519(alice_curve)
    assert owner is not None and owner.user_id == alice.user_id
    later = alice.send(ROOM, "still alice's")
    bob.tick()
    assert bob.read(ROOM, later) == "still alice's"


def _normal_message() -> str:
    """A well-formed Olm message (type 1) of some unrelated session: it decrypts with nothing."""
    one, two = vodozemac.Account(), vodozemac.Account()
    two.generate_one_time_keys(1)
    otk = next(iter(two.one_time_keys.values()))
    outbound = one.create_outbound_session(two.curve25519_key, otk)
    first = outbound.encrypt(b"x").to_pre_key()
    assert first is not None
    inbound, _ = two.create_inbound_session(one.curve25519_key, first)
    message_type, body = inbound.encrypt(b"y").to_parts()
    assert message_type == 1
    return base64.b64encode(body).decode().rstrip("=")


def test_unwedging_is_only_for_the_senders_own_device() -> None:
    _server, (alice, bob, mallory) = make_room(ROOM, "alice", "bob", "mallory")
    garbage = {
        "type": "m.room.encrypted",
        "sender": mallory.user_id,
        "content": {
            "algorithm": "m.olm.v1.curve25519-aes-sha2",
            "sender_key": alice.machine.identity_keys["curve25519"],
            "ciphertext": {
                bob.machine.identity_keys["curve25519"]: {"type": 1, "body": _normal_message()}
            },
        },
    }
    bob.machine.receive_sync({"to_device": {"events": [garbage]}})
    claims = [r for r in bob.machine.outgoing_requests() if r.kind is RequestKind.KEYS_CLAIM]
    assert claims == [], "mallory made us claim alice's one-time keys"


def test_bundled_relations_under_an_odd_unsigned_still_decrypt() -> None:
    _server, (alice, bob) = make_room(ROOM, "alice", "bob")
    event: dict[str, Any] = dict(alice.send(ROOM, "hello"), unsigned=None)
    bob.tick()
    result = bob.decrypt(ROOM, event)
    assert isinstance(result, Decrypted), result
    assert result.event["content"]["body"] == "hello"
