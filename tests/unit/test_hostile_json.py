"""JSON from outside that Python's parser takes badly (issue 13, item 4, found by the fuzzing in
tests/unit/test_fuzz*.py): nested past the interpreter's recursion limit, which raised
RecursionError where only bad-JSON errors were expected; and strings with a lone surrogate (a
"\\ud800" escape), which have no UTF-8 form. Each is now bad input like any other."""

from __future__ import annotations

import json

import pytest
import vodozemac

from e2eproxy.crypto import secret_storage
from e2eproxy.crypto.backup import BackupDecryptionKey, BackupError, restore_session
from e2eproxy.crypto.results import DecryptionFailure, FailureReason
from e2eproxy.protocol.canonical import parse_json, verify_json
from e2eproxy.proxy.handlers.common import json_bytes
from tests.support.fuzz_peers import ROOM, Peers, b64

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_parse_json_takes_deep_nesting_as_bad_json() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(DEEP)


def test_a_signed_object_too_deep_to_encode_is_not_signed() -> None:
    """Parsed near the limit, an object can be too deep to encode from further down the stack
    (canonical JSON for a signature check): an invalid signature, not a RecursionError."""
    value: object = {}
    for _ in range(5_000):
        value = [value]
    signed = {"deep": value, "signatures": {"@a:b": {"ed25519:K": "c2ln"}}}
    assert verify_json(signed, "@a:b", "ed25519:K", b64(bytes(32))) is False


def test_olm_plaintext_nested_too_deeply_is_a_bad_payload() -> None:
    """Not an internal error (a RecursionError caught by the router, traceback in the log)."""
    peers = Peers()
    result = peers.bob.machine.receive_sync(
        {"to_device": {"events": [peers.olm(peers.alice, DEEP)]}})
    assert [(f.event_type, f.reason) for f in result.failures] == [
        ("m.room.encrypted", "payload_invalid")]


def test_megolm_plaintext_nested_too_deeply_is_a_bad_payload() -> None:
    """A room member writes what they like in their own session: not an internal error."""
    peers = Peers()
    session = vodozemac.GroupSession()
    key = {"algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM,
           "session_id": session.session_id, "session_key": session.session_key.to_base64()}
    event = peers.olm(peers.alice, peers.envelope(peers.alice, "m.room_key", key))
    peers.bob.machine.receive_sync({"to_device": {"events": [event]}})
    content = {"algorithm": "m.megolm.v1.aes-sha2", "session_id": session.session_id,
               "sender_key": peers.alice.machine.identity_keys["curve25519"],
               "device_id": peers.alice.device_id, "ciphertext": session.encrypt(DEEP)
               .to_base64()}
    result = peers.bob.machine.decrypt_room_event(ROOM, {
        "type": "m.room.encrypted", "sender": peers.alice.user_id, "event_id": "$deep",
        "origin_server_ts": 1, "room_id": ROOM, "content": content})
    assert isinstance(result, DecryptionFailure)
    assert result.reason is FailureReason.PAYLOAD_INVALID, result


def test_a_backup_entry_nested_too_deeply_is_malformed() -> None:
    """The server can seal anything for the backup's public key: this raised RecursionError
    out of restore_session."""
    key = BackupDecryptionKey.generate()
    pk = vodozemac.PkEncryption.from_key(vodozemac.Curve25519PublicKey.from_base64(
        key.public_key))
    sealed = pk.encrypt(DEEP)
    session_data = {"ephemeral": b64(sealed.ephemeral_key),
                    "ciphertext": b64(sealed.ciphertext), "mac": b64(sealed.mac)}
    with pytest.raises(BackupError):
        restore_session(key, ROOM, "S", {"session_data": session_data})


def test_a_passphrase_salt_with_no_utf8_form_is_malformed() -> None:
    """It raised UnicodeEncodeError out of derive_key."""
    params = {"algorithm": "m.pbkdf2", "salt": "\ud800", "iterations": 3, "bits": 256}
    with pytest.raises(secret_storage.MalformedSecretStorage):
        secret_storage.derive_key("passphrase", {"passphrase": params})


def test_a_rewritten_body_with_a_lone_surrogate_is_written_as_it_came() -> None:
    """It raised UnicodeEncodeError (the /sync failed with 500); ordinary text stays UTF-8."""
    assert json.loads(json_bytes({"body": "odd \ud800"})) == {"body": "odd \ud800"}
    assert json_bytes({"body": "é"}) == '{"body":"é"}'.encode()
