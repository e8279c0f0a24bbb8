"""What the engine puts on the wire, field by field, as matrix-rust-sdk's serde types read it.

A raw vodozemac device (no engine of ours) receives what the engine sends and reads the Olm
plaintext itself, so these tests see the exact JSON a peer gets. The expected field sets follow
matrix-sdk-crypto 0.19's types (`types/events/{room_key,forwarded_room_key,room_key_withheld,
olm_v1}.rs`, `types/events/room/encrypted.rs`) with the spec as the tie-breaker. rust-sdk drops
a whole room key that carries `m.shared_history` twice (once under its MSC3061 alias), so the
sets are exact: a field under two names fails here.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import canonicaljson
import vodozemac

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, ToDeviceFailure
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.protocol.api import RequestKind
from e2eproxy.protocol.canonical import verify_json
from tests.support.machine_pair import Client, FakeServer, make_clients

ROOM = "!wire:test"
OLM = "m.olm.v1.curve25519-aes-sha2"
MEGOLM = "m.megolm.v1.aes-sha2"


def _sign(account: vodozemac.Account, user: str, key_id: str, value: dict[str, Any]) -> None:
    unsigned = {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}
    signature = account.sign(canonicaljson.encode_canonical_json(unsigned)).to_base64()
    value.setdefault("signatures", {}).setdefault(user, {})[key_id] = signature


class RawDevice:
    """A device that is only a vodozemac account registered on the fake server by hand."""

    def __init__(self, server: FakeServer, user_id: str = "@raw:test",
                 device_id: str = "RAWDEV") -> None:
        self.server, self.user_id, self.device_id = server, user_id, device_id
        self.account = vodozemac.Account()
        self.sessions: list[vodozemac.Session] = []
        keys: dict[str, Any] = {
            "user_id": user_id, "device_id": device_id, "algorithms": [OLM, MEGOLM],
            "keys": {
                f"curve25519:{device_id}": self.account.curve25519_key.to_base64(),
                f"ed25519:{device_id}": self.account.ed25519_key.to_base64(),
            },
        }
        _sign(self.account, user_id, f"ed25519:{device_id}", keys)
        server.device_keys.setdefault(user_id, {})[device_id] = keys
        self.account.generate_one_time_keys(5)
        otks = {}
        for key_id, key in self.account.one_time_keys.items():
            otk: dict[str, Any] = {"key": key.to_base64()}
            _sign(self.account, user_id, f"ed25519:{device_id}", otk)
            otks[f"signed_curve25519:{key_id}"] = otk
        self.account.mark_keys_as_published()
        server.otks[(user_id, device_id)] = otks
        for client in server.clients:
            server.changed.setdefault(client.key, set()).add(user_id)

    def inbox(self) -> list[dict[str, Any]]:
        return self.server.inbox.pop((self.user_id, self.device_id), [])

    def open(self, event: dict[str, Any]) -> dict[str, Any]:
        """The Olm plaintext of one to-device ``m.room.encrypted`` event, as parsed JSON."""
        content = event["content"]
        body = content["ciphertext"][self.account.curve25519_key.to_base64()]
        message = vodozemac.AnyOlmMessage.from_parts(body["type"], _b64(body["body"]))
        sender_key = vodozemac.Curve25519PublicKey.from_base64(content["sender_key"])
        for session in self.sessions:
            try:
                return dict(json.loads(session.decrypt(message)))
            except ValueError:
                continue
        pre_key = vodozemac.PreKeyMessage.from_base64(body["body"])
        session, plaintext = self.account.create_inbound_session(sender_key, pre_key)
        self.sessions.append(session)
        return dict(json.loads(plaintext))


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _room_with_raw(**encryption: Any) -> tuple[Client, RawDevice]:
    server, (alice,) = make_clients("alice")
    raw = RawDevice(server)
    server.create_room(ROOM, alice.user_id, [raw.user_id],
                       {"algorithm": MEGOLM, **encryption} if encryption else None)
    alice.tick()
    return alice, raw


def _olm_payload_checks(payload: dict[str, Any], alice: Client, raw: RawDevice) -> None:
    # DecryptedOlmV1Event: sender, recipient, keys, recipient_keys, sender_device_keys, type,
    # content; nothing under a second name.
    assert set(payload) == {
        "sender", "recipient", "keys", "recipient_keys", "sender_device_keys", "type", "content",
    }, sorted(payload)
    assert payload["sender"] == alice.user_id
    assert payload["recipient"] == raw.user_id
    assert payload["recipient_keys"] == {"ed25519": raw.account.ed25519_key.to_base64()}
    ed25519 = alice.machine.identity_keys["ed25519"]
    assert payload["keys"] == {"ed25519": ed25519}
    # MSC4147 as the spec checks it: the sender's own device keys, signed, naming its keys.
    device_keys = payload["sender_device_keys"]
    assert device_keys["user_id"] == alice.user_id
    assert device_keys["device_id"] == alice.device_id
    assert device_keys["keys"] == {
        f"curve25519:{alice.device_id}": alice.machine.identity_keys["curve25519"],
        f"ed25519:{alice.device_id}": ed25519,
    }
    assert verify_json(device_keys, alice.user_id, f"ed25519:{alice.device_id}", ed25519)


def test_room_key_carries_shared_history_once_under_its_stable_name() -> None:
    alice, raw = _room_with_raw(history_visibility="shared")
    [request] = alice.share(ROOM)
    [event] = raw.inbox()
    assert event["type"] == "m.room.encrypted"
    # OlmV1Curve25519AesSha2Content: algorithm, sender_key, ciphertext (one entry per recipient
    # key, an integer type and a string body).
    content = event["content"]
    assert set(content) == {"algorithm", "sender_key", "ciphertext"}, sorted(content)
    assert content["algorithm"] == OLM
    assert content["sender_key"] == alice.machine.identity_keys["curve25519"]
    [(recipient, body)] = content["ciphertext"].items()
    assert recipient == raw.account.curve25519_key.to_base64()
    assert body["type"] == 0 and type(body["type"]) is int and isinstance(body["body"], str)

    payload = raw.open(event)
    _olm_payload_checks(payload, alice, raw)
    assert payload["type"] == "m.room_key"
    room_key = payload["content"]
    assert set(room_key) == {
        "algorithm", "room_id", "session_id", "session_key", "m.shared_history",
    }, sorted(room_key)
    assert "org.matrix.msc3061.shared_history" not in room_key
    assert room_key["algorithm"] == MEGOLM and room_key["room_id"] == ROOM
    assert type(room_key["m.shared_history"]) is bool
    # The session key is one vodozemac (and so rust-sdk) accepts.
    session = vodozemac.InboundGroupSession(vodozemac.SessionKey(room_key["session_key"]))
    assert session.session_id == room_key["session_id"]
    assert request.kind is RequestKind.TO_DEVICE


def test_megolm_event_content_fields() -> None:
    alice, _raw = _room_with_raw()
    relation = {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}
    event = alice.send(ROOM, "hi", **{"m.relates_to": relation})
    # MegolmV1AesSha2Content: ciphertext, session_id, and the deprecated sender_key and
    # device_id that rust-sdk itself still sends; m.relates_to in the clear for the server.
    assert set(event["content"]) == {
        "algorithm", "ciphertext", "session_id", "sender_key", "device_id", "m.relates_to",
    }, sorted(event["content"])
    assert event["content"]["device_id"] == alice.device_id
    assert event["content"]["m.relates_to"] == relation


def test_withheld_notices_fields() -> None:
    alice, raw = _room_with_raw()
    assert alice.machine.get_device(raw.user_id, raw.device_id) is not None
    alice.machine.set_local_trust(raw.user_id, raw.device_id, LocalTrust.BLACKLISTED)
    alice.share(ROOM)
    [event] = raw.inbox()
    assert event["type"] == "m.room_key.withheld"
    content = event["content"]
    # CommonWithheldCodeContent: room_id, session_id, sender_key, from_device; code and reason.
    assert set(content) == {
        "algorithm", "code", "reason", "room_id", "session_id", "sender_key", "from_device",
    }, sorted(content)
    assert content["code"] == "m.blacklisted" and isinstance(content["reason"], str)


def test_no_olm_notice_has_no_session_fields() -> None:
    server, (alice,) = make_clients("alice")
    raw = RawDevice(server)
    server.otks[(raw.user_id, raw.device_id)] = {}  # no one-time key, no fallback key
    server.create_room(ROOM, alice.user_id, [raw.user_id])
    alice.tick()
    alice.share(ROOM)
    [event] = raw.inbox()
    assert event["type"] == "m.room_key.withheld"
    # NoOlmWithheldContent: sender_key, from_device (no room or session).
    assert set(event["content"]) == {"algorithm", "code", "reason", "sender_key", "from_device"}
    assert event["content"]["code"] == "m.no_olm"


def test_forwarded_room_key_answer_fields() -> None:
    alice, raw = _room_with_raw()
    alice.share(ROOM)
    [key_event] = raw.inbox()
    room_key = raw.open(key_event)["content"]
    request = {
        "type": "m.room_key_request", "sender": raw.user_id,
        "content": {
            "action": "request", "requesting_device_id": raw.device_id, "request_id": "r1",
            "body": {"algorithm": MEGOLM, "room_id": ROOM, "session_id": room_key["session_id"],
                     "sender_key": alice.machine.identity_keys["curve25519"]},
        },
    }
    raw.server.inbox.setdefault(alice.key, []).append(request)
    alice.tick()
    [answer] = raw.inbox()
    payload = raw.open(answer)
    _olm_payload_checks(payload, alice, raw)
    assert payload["type"] == "m.forwarded_room_key"
    # ForwardedMegolmV1AesSha2Content (and the spec's required set), plus MSC3061's flag.
    assert set(payload["content"]) == {
        "algorithm", "room_id", "session_id", "session_key", "sender_key",
        "sender_claimed_ed25519_key", "forwarding_curve25519_key_chain", "m.shared_history",
    }, sorted(payload["content"])
    assert payload["content"]["forwarding_curve25519_key_chain"] == []
    vodozemac.InboundGroupSession.import_session(
        vodozemac.ExportedSessionKey(payload["content"]["session_key"])
    )


def test_key_upload_shapes() -> None:
    server, _ = make_clients("alice")
    [(_, upload)] = [
        (owner, r) for owner, r in server.requests
        if r.kind is RequestKind.KEYS_UPLOAD and "device_keys" in r.body
    ]
    assert set(upload.body["device_keys"]) == {
        "user_id", "device_id", "algorithms", "keys", "signatures",
    }
    assert upload.body["device_keys"]["algorithms"] == [OLM, MEGOLM]
    for key_id, otk in upload.body["one_time_keys"].items():
        assert key_id.startswith("signed_curve25519:")
        assert set(otk) == {"key", "signatures"}
    for key_id, fallback in upload.body["fallback_keys"].items():
        assert key_id.startswith("signed_curve25519:")
        assert set(fallback) == {"key", "fallback", "signatures"} and fallback["fallback"] is True


# -- what we accept ------------------------------------------------------------------------


def _raw_shares_room_key(alice: Client, raw: RawDevice, room_key: dict[str, Any],
                         tamper: Any = None) -> None:
    """The raw device sends `room_key` to Alice over a fresh Olm session it makes itself."""
    server = raw.server
    alice_keys = server.device_keys[alice.user_id][alice.device_id]
    curve = alice_keys["keys"][f"curve25519:{alice.device_id}"]
    otks = server.otks[alice.key]
    key_id = next(iter(otks))
    otk = otks.pop(key_id)["key"]
    session = raw.account.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(curve),
        vodozemac.Curve25519PublicKey.from_base64(otk),
    )
    raw_keys = server.device_keys[raw.user_id][raw.device_id]
    payload: dict[str, Any] = {
        "sender": raw.user_id, "recipient": alice.user_id,
        "keys": {"ed25519": raw.account.ed25519_key.to_base64()},
        "recipient_keys": {"ed25519": alice_keys["keys"][f"ed25519:{alice.device_id}"]},
        "sender_device_keys": json.loads(json.dumps(raw_keys)),
        "type": "m.room_key", "content": room_key,
    }
    if tamper is not None:
        tamper(payload)
    message_type, body = session.encrypt(json.dumps(payload).encode()).to_parts()
    server.inbox.setdefault(alice.key, []).append({
        "type": "m.room.encrypted", "sender": raw.user_id,
        "content": {
            "algorithm": OLM, "sender_key": raw.account.curve25519_key.to_base64(),
            "ciphertext": {curve: {"type": message_type,
                                   "body": base64.b64encode(body).decode().rstrip("=")}},
        },
    })


def _raw_outbound(raw: RawDevice) -> tuple[vodozemac.GroupSession, dict[str, Any]]:
    group = vodozemac.GroupSession()
    return group, {"algorithm": MEGOLM, "room_id": ROOM, "session_id": group.session_id,
                   "session_key": group.session_key.to_base64()}


def _raw_event(raw: RawDevice, group: vodozemac.GroupSession, body: str) -> dict[str, Any]:
    plaintext = json.dumps({"type": "m.room.message", "room_id": ROOM,
                            "content": {"msgtype": "m.text", "body": body}})
    return {
        "type": "m.room.encrypted", "sender": raw.user_id, "event_id": f"${body}",
        "origin_server_ts": 1, "room_id": ROOM,
        "content": {"algorithm": MEGOLM, "session_id": group.session_id,
                    "sender_key": raw.account.curve25519_key.to_base64(), "device_id": "RAWDEV",
                    "ciphertext": group.encrypt(plaintext.encode()).to_base64()},
    }


def test_either_name_of_shared_history_is_accepted() -> None:
    for name in ("m.shared_history", "org.matrix.msc3061.shared_history"):
        alice, raw = _room_with_raw()
        group, room_key = _raw_outbound(raw)
        room_key[name] = True
        _raw_shares_room_key(alice, raw, room_key)
        alice.tick()
        result = alice.decrypt(ROOM, _raw_event(raw, group, "hello"))
        assert isinstance(result, Decrypted) and result.event["content"]["body"] == "hello"


def test_sender_device_keys_that_do_not_match_are_refused() -> None:
    def other_curve(payload: dict[str, Any]) -> None:
        payload["sender_device_keys"]["keys"]["curve25519:RAWDEV"] = "A" * 43

    def unsigned(payload: dict[str, Any]) -> None:
        payload["sender_device_keys"]["signatures"] = {}

    def other_user(payload: dict[str, Any]) -> None:
        payload["sender_device_keys"]["user_id"] = "@someone:test"

    for tamper in (other_curve, unsigned, other_user):
        alice, raw = _room_with_raw()
        group, room_key = _raw_outbound(raw)
        _raw_shares_room_key(alice, raw, room_key, tamper)
        result = alice.sync()
        assert [f.reason for f in result.failures if isinstance(f, ToDeviceFailure)] == [
            "sender_device_keys_invalid"
        ], tamper.__name__
        assert result.room_keys == [], tamper.__name__
        decrypted = alice.decrypt(ROOM, _raw_event(raw, group, "hello"))
        assert isinstance(decrypted, DecryptionFailure), tamper.__name__


def test_megolm_event_without_its_deprecated_fields_decrypts() -> None:
    # The spec deprecates sender_key and device_id in Megolm events; a sender may leave them out.
    alice, raw = _room_with_raw()
    group, room_key = _raw_outbound(raw)
    _raw_shares_room_key(alice, raw, room_key)
    alice.tick()
    event = _raw_event(raw, group, "lean")
    del event["content"]["sender_key"], event["content"]["device_id"]
    result = alice.decrypt(ROOM, event)
    assert isinstance(result, Decrypted) and result.event["content"]["body"] == "lean"
    assert result.sender_device == raw.device_id
