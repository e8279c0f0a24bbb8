"""Three engines for fuzzing to-device input past Olm (tests/unit/test_fuzz_*.py): Alice, a
member of Bob's room, and Bob's phone, his verified own device, each with an Olm session to Bob.
Whatever payload a test makes, `olm` encrypts it with that real session, so it reaches Bob's
handlers as a peer's engine would have sent it; `settle` does what the shell does after a sync."""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import vodozemac

from e2eproxy.crypto.settings import MEGOLM_ALGORITHM, LocalTrust
from e2eproxy.store.txn import plan_changes
from tests.support.machine_pair import Client, make_clients

ROOM = "!fuzz:test"
TXN = "fuzz-flow"
PICKLE_KEY = b"\x01" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


class Peers:
    def __init__(self) -> None:
        server, (alice, bob, phone) = make_clients("alice", "bob", "bob/PHONE")
        server.create_room(ROOM, alice.user_id, [bob.user_id])
        for client in (alice, bob, phone):
            client.tick()
        # Bob's phone is his verified own device: forwarded keys, secrets and key requests
        # from it get past the sender checks, into the handlers' own parsing.
        bob.machine.set_local_trust(bob.user_id, phone.device_id, LocalTrust.VERIFIED)
        for sender in (alice, phone):
            device = sender.machine.get_device(bob.user_id, bob.device_id)
            assert device is not None
            claim = sender.machine._claimer.claim_request([device])
            if claim is not None:
                sender.machine._queue.add(claim, in_flight=True)
                sender.answer(claim)
        bob.machine.take_changes()
        self.alice, self.bob, self.phone = alice, bob, phone

    def now_ms(self) -> int:
        return self.alice.server.clock.now_ms()

    def envelope(self, sender: Client, event_type: str, content: Any) -> dict[str, Any]:
        """The Olm payload an engine writes (olm.py), around any content."""
        return {
            "sender": sender.user_id,
            "keys": {"ed25519": sender.machine.identity_keys["ed25519"]},
            "recipient": self.bob.user_id,
            "recipient_keys": {"ed25519": self.bob.machine.identity_keys["ed25519"]},
            "sender_device_keys": sender.machine.device_keys(),
            "type": event_type,
            "content": content,
        }

    def olm(self, sender: Client, payload: Any) -> dict[str, Any]:
        """`payload` (JSON data, or raw bytes) encrypted by `sender` for Bob with their real
        Olm session, as a to-device event. JSON as a peer could write it: lone surrogates
        escaped, NaN and huge numbers kept."""
        plaintext = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        bob_curve = self.bob.machine.identity_keys["curve25519"]
        record = sender.machine._olm._sessions[bob_curve][0]
        message_type, body = record.session.encrypt(plaintext).to_parts()
        content = {
            "algorithm": "m.olm.v1.curve25519-aes-sha2",
            "sender_key": sender.machine.identity_keys["curve25519"],
            "ciphertext": {bob_curve: {"type": message_type, "body": b64(body)}},
        }
        return {"type": "m.room.encrypted", "sender": sender.user_id, "content": content}

    def genuine_room_key(self) -> tuple[dict[str, Any], str]:
        """A new room key from Alice, Olm-encrypted, and its session id."""
        session = vodozemac.GroupSession()
        content = {"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM,
                   "session_id": session.session_id,
                   "session_key": session.session_key.to_base64()}
        return self.olm(self.alice, self.envelope(self.alice, "m.room_key", content)), (
            session.session_id)

    def settle(self) -> None:
        """What the shell does after a sync: commit (here: encode every record as the store
        would), and send what the engine wants sent (each answered empty)."""
        machine = self.bob.machine
        plan_changes(machine.take_changes(), PICKLE_KEY, 0)
        for request in machine.outgoing_requests():
            machine.mark_request_as_sent(request.id, {})
        plan_changes(machine.take_changes(), PICKLE_KEY, 0)

    @functools.cached_property
    def templates(self) -> dict[str, dict[str, Any]]:
        """A genuine content of each to-device type Bob handles (and one he does not); the
        verification events belong to one flow, from the phone."""
        session = vodozemac.GroupSession()
        inbound = vodozemac.InboundGroupSession(session.session_key)
        key = b64(b"\x02" * 32)
        alice, phone = self.alice, self.phone
        key_body = {"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM,
                    "sender_key": alice.machine.identity_keys["curve25519"],
                    "session_id": session.session_id}
        sas = {"from_device": phone.device_id, "transaction_id": TXN}
        return {
            "m.room_key": {"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM,
                           "session_id": session.session_id,
                           "session_key": session.session_key.to_base64(),
                           "m.shared_history": True},
            "m.forwarded_room_key": {
                **key_body, "session_key": inbound.export_at(0).to_base64(),
                "sender_claimed_ed25519_key": alice.machine.identity_keys["ed25519"],
                "forwarding_curve25519_key_chain": [], "m.shared_history": False},
            "m.room_key.withheld": {**key_body, "code": "m.unverified", "reason": "no",
                                    "from_device": alice.device_id},
            "m.room_key_request": {"action": "request", "body": key_body, "request_id": "r1",
                                   "requesting_device_id": phone.device_id},
            "m.secret.request": {"action": "request", "name": "m.cross_signing.master",
                                 "request_id": "s1", "requesting_device_id": phone.device_id},
            "m.secret.send": {"request_id": "s1", "secret": key},
            "m.dummy": {},
            "m.key.verification.request": {**sas, "methods": ["m.sas.v1"],
                                           "timestamp": self.now_ms()},
            "m.key.verification.ready": {**sas, "methods": ["m.sas.v1"]},
            "m.key.verification.start": {
                **sas, "method": "m.sas.v1",
                "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
                "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
                "short_authentication_string": ["decimal", "emoji"]},
            "m.key.verification.accept": {
                "transaction_id": TXN, "method": "m.sas.v1",
                "key_agreement_protocol": "curve25519-hkdf-sha256", "hash": "sha256",
                "message_authentication_code": "hkdf-hmac-sha256.v2",
                "short_authentication_string": ["decimal"], "commitment": key},
            "m.key.verification.key": {"transaction_id": TXN, "key": key},
            "m.key.verification.mac": {"transaction_id": TXN, "keys": key,
                                       "mac": {f"ed25519:{phone.device_id}": key}},
            "m.key.verification.done": {"transaction_id": TXN},
            "m.key.verification.cancel": {"transaction_id": TXN, "code": "m.user",
                                          "reason": "x"},
            "org.example.unknown": {"x": 1},
        }
