"""Every parser of what comes from outside, beyond the engine (issue 13, item 4): the slots of
hostile response bodies (sync, sliding sync, /messages, /context, /event, /notifications,
/search), media fields and EncryptedFile objects, key backup entries, secret storage, cross-signing
keys from /keys/query, key export files, the control protocol and the config file. Each raises
only its documented error, and what the proxy writes back stays writable."""

from __future__ import annotations

import base64
import contextlib
import json
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import vodozemac
from hypothesis import example, given
from hypothesis import strategies as st

from e2eproxy import key_export as kx
from e2eproxy.config import load_config, parse_config
from e2eproxy.control.protocol import ControlError, parse_request, parse_response
from e2eproxy.crypto import secret_storage
from e2eproxy.crypto.backup import BackupDecryptionKey, BackupError, restore_session
from e2eproxy.crypto.cross_signing import (
    CrossSigningError,
    CrossSigningKeys,
    identities_from_query,
    identity_from_query,
)
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.errors import ConfigError
from e2eproxy.protocol import rewrite, sliding
from e2eproxy.protocol.attachments import AttachmentError, Encryptor, parse_encrypted_file
from e2eproxy.protocol.media_fields import fields_of, media_uris, with_plain_media
from e2eproxy.proxy.handlers.common import json_bytes
from e2eproxy.store.room_keys import parse_sessions
from tests.support.fuzz import FUZZ, json_values, near_valid, shapes
from tests.support.fuzz_peers import b64

ROOM = "!room:test"
# JSON nested deeper than Python's parser recurses: what a hostile author can seal in anything.
DEEP = b"[" * 100_000 + b"]" * 100_000
ENCRYPTED = {
    "type": "m.room.encrypted", "event_id": "$e", "sender": "@a:test", "room_id": ROOM,
    "origin_server_ts": 1, "content": {"algorithm": MEGOLM_ALGORITHM, "ciphertext": "AAAA",
                                       "session_id": "S", "sender_key": "K", "device_id": "D"},
}
ROOMS = {"timeline": {"events": [ENCRYPTED]}, "state": {"events": [ENCRYPTED]}}
SYNC = {"next_batch": "s1", "rooms": {"join": {ROOM: ROOMS}, "leave": {"!l:test": ROOMS}},
        "to_device": {"events": [{"type": "m.room_key", "content": {}},
                                 {"type": "m.custom", "content": {}}]}}
SLIDING = {"rooms": {ROOM: {"timeline": [ENCRYPTED], "required_state": [ENCRYPTED]}},
           "extensions": {"to_device": {"events": [{"type": "m.room_key", "content": {}}]},
                          "e2ee": {"device_lists": {"changed": ["@a:test"]}}}}
CHUNK = {"chunk": [ENCRYPTED], "state": [ENCRYPTED]}
CONTEXT = {"event": ENCRYPTED, "events_before": [ENCRYPTED], "events_after": [ENCRYPTED],
           "state": [ENCRYPTED]}
NOTIFICATIONS = {"notifications": [{"room_id": ROOM, "event": ENCRYPTED}]}
SEARCH = {"search_categories": {"room_events": {"results": [
    {"result": ENCRYPTED, "context": {"events_before": [ENCRYPTED]}}]}}}

# As parsed from JSON: no object shared between two places of one body.
SYNC, SLIDING, CHUNK, CONTEXT, NOTIFICATIONS, SEARCH = json.loads(
    json.dumps([SYNC, SLIDING, CHUNK, CONTEXT, NOTIFICATIONS, SEARCH]))
SLOTS = {
    "sync": (SYNC, rewrite.sync_slots),
    "sliding": (SLIDING, sliding.sliding_slots),
    "chunk": (CHUNK, lambda body: rewrite.chunk_slots(ROOM, body)),
    "context": (CONTEXT, lambda body: rewrite.context_slots(ROOM, body)),
    "event": (ENCRYPTED, lambda body: rewrite.event_slots(ROOM, body)),
    "notifications": (NOTIFICATIONS, rewrite.notification_slots),
    "search": (SEARCH, rewrite.search_slots),
}


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(SLOTS)))
def test_hostile_response_bodies_are_rewritten_whole(data: st.DataObject, kind: str) -> None:
    template, slots = SLOTS[kind]
    body = data.draw(shapes(template))
    found = list(slots(body))
    for slot in found:
        assert rewrite.is_encrypted(slot.event)
        slot.replace(rewrite.undecryptable_notice(slot.event, "fuzz"))
    # Every encrypted event was found: none is left for a second pass to find.
    assert list(slots(body)) == []
    if kind == "sync":
        rewrite.verification_events(body)
        rewrite.strip_crypto_to_device(body)
    if kind == "sliding":
        sliding.as_sync_body(body)
        sliding.strip_crypto_to_device(body)
    assert json.loads(json_bytes(body)) is not None or body is None


def test_the_genuine_bodies_have_every_slot_found() -> None:
    """The templates the fuzzing starts from: each encrypted event in them is a slot."""
    counts = {kind: len(list(slots(json.loads(json.dumps(template)))))
              for kind, (template, slots) in SLOTS.items()}
    assert counts == {"sync": 4, "sliding": 1, "chunk": 2, "context": 4, "event": 1,
                      "notifications": 1, "search": 2}


@FUZZ
@given(body=json_values)
@example(body={"content": {"body": "\ud800 and more"}})
def test_what_the_proxy_writes_back_reads_as_it_came(body: Any) -> None:
    """A server's JSON, even with a lone surrogate from a "\\ud800" escape, which UTF-8 cannot
    hold, is written back as JSON that reads the same."""
    assert json.loads(json_bytes(body)) == json.loads(json.dumps(body))


def _encrypted_file() -> dict[str, Any]:
    encryptor = Encryptor()
    encryptor.update(b"file")
    return encryptor.finish().to_json("mxc://test/media")


@FUZZ
@given(data=st.data())
def test_media_references_in_hostile_content(data: st.DataObject) -> None:
    file = _encrypted_file()
    content = data.draw(shapes({"msgtype": "m.image", "body": "x", "url": "mxc://test/a",
                                "file": file, "info": {"thumbnail_url": "mxc://test/t",
                                                       "thumbnail_file": file}}))
    fields = fields_of("m.room.message")
    uris = media_uris(content, fields)
    if isinstance(content, dict):
        with_plain_media(content, fields, dict.fromkeys(uris, "mxc://test/plain"))
    with contextlib.suppress(AttachmentError):
        parse_encrypted_file(data.draw(shapes(file)))


def _sealed(public_key: str, plaintext: bytes) -> dict[str, str]:
    """`plaintext` encrypted for the backup's public key: anyone can, the key is public."""
    pk = vodozemac.PkEncryption.from_key(vodozemac.Curve25519PublicKey.from_base64(public_key))
    message = pk.encrypt(plaintext)
    return {"ephemeral": b64(message.ephemeral_key), "ciphertext": b64(message.ciphertext),
            "mac": b64(message.mac)}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@FUZZ
@given(data=st.data())
def test_key_backup_entries(data: st.DataObject) -> None:
    key = BackupDecryptionKey.generate()
    session = vodozemac.GroupSession()
    entry = {"algorithm": MEGOLM_ALGORITHM, "sender_key": "K", "sender_claimed_keys": {},
             "forwarding_curve25519_key_chain": [],
             "session_key": vodozemac.InboundGroupSession(session.session_key)
             .export_at(0).to_base64()}
    backup_data = {"first_message_index": 0, "forwarded_count": 0, "is_verified": False,
                   "session_data": _sealed(key.public_key, _json(entry))}
    # The server's entry as filed, and entries it (or a broken peer) sealed for our key, so
    # the checks after decryption are reached.
    inner = data.draw(shapes(entry) | st.just(DEEP))
    candidates = [data.draw(shapes(backup_data)),
                  {**backup_data, "session_data": _sealed(
                      key.public_key, inner if isinstance(inner, bytes) else _json(inner))}]
    for hostile in candidates:
        try:
            restored = restore_session(key, ROOM, session.session_id, hostile)
        except BackupError:
            continue
        assert restored["session_id"] == session.session_id


@FUZZ
@given(data=st.data())
def test_secret_storage_account_data(data: st.DataObject) -> None:
    key = secret_storage.new_key()
    content = secret_storage.secret_account_data(key, "m.cross_signing.master", "secret")
    with contextlib.suppress(secret_storage.SecretStorageError):
        secret_storage.read_secret(key, "m.cross_signing.master", data.draw(shapes(content)))
    description = data.draw(shapes(key.description))
    with contextlib.suppress(secret_storage.SecretStorageError):
        secret_storage.check_key(key.key, description)
        secret_storage.open_key(key.recovery_key(), key.key_id, description)


@FUZZ
@given(data=st.data())
def test_passphrase_parameters_from_the_server(data: st.DataObject) -> None:
    params = {"algorithm": "m.pbkdf2", "salt": "salt", "iterations": 3, "bits": 256}
    description = data.draw(near_valid({"algorithm": secret_storage.AES_HMAC_SHA2,
                                        "passphrase": params}))
    info = description.get("passphrase") if isinstance(description, dict) else None
    iterations = info.get("iterations") if isinstance(info, dict) else None
    if isinstance(iterations, int) and 1_000 < iterations <= secret_storage.MAX_PBKDF2_ITERATIONS:
        return  # valid, only slow: not what is fuzzed here
    with contextlib.suppress(secret_storage.SecretStorageError):
        secret_storage.derive_key("passphrase", description)


def _query_answer() -> dict[str, Any]:
    keys = CrossSigningKeys.generate()
    device = vodozemac.Account()
    body = keys.upload_body("@a:test", "DEV", lambda message: device.sign(message).to_base64())
    return {"master_keys": {"@a:test": body["master_key"]},
            "self_signing_keys": {"@a:test": body["self_signing_key"]},
            "user_signing_keys": {"@a:test": body["user_signing_key"]}}


QUERY_ANSWER = _query_answer()


@FUZZ
@given(data=st.data())
def test_cross_signing_keys_in_query_answers(data: st.DataObject) -> None:
    answer = data.draw(shapes(QUERY_ANSWER))
    if not isinstance(answer, dict):
        return
    with contextlib.suppress(CrossSigningError):
        identity_from_query(answer, "@a:test")
    identities_from_query(answer)


def _export_of(plaintext: bytes, rounds: int = 1) -> str:
    """An export file around any plaintext (a hostile file's author writes what they like)."""
    salt, iv = bytes(kx.SALT_SIZE), bytes(kx.IV_SIZE)
    aes_key, mac_key = kx._derive("pw", salt, rounds)
    payload = (bytes([kx.VERSION]) + salt + iv + rounds.to_bytes(4, "big")
               + kx._ctr(aes_key, iv, plaintext))
    payload += kx._mac(mac_key, payload)
    return f"{kx.HEADER}\n{base64.b64encode(payload).decode()}\n{kx.FOOTER}\n"


EXPORTED = [{"algorithm": MEGOLM_ALGORITHM, "room_id": ROOM, "sender_key": "K",
             "session_id": "S", "session_key": "AAAA", "sender_claimed_keys": {"ed25519": "E"}}]


@FUZZ
@given(plaintext=shapes(EXPORTED).map(_json) | st.binary(max_size=60) | st.just(DEEP))
def test_key_export_contents(plaintext: bytes) -> None:
    try:
        entries = kx.decrypt_key_export(_export_of(plaintext), "pw")
    except kx.KeyExportError:
        return
    parse_sessions(entries)


@FUZZ
@given(text=st.text(max_size=300), cut=st.integers(0, 400))
def test_key_export_files(text: str, cut: int) -> None:
    armored = _export_of(_json(EXPORTED))
    for candidate in (text, armored[:cut] + text, f"{kx.HEADER}\n{text}\n{kx.FOOTER}"):
        with contextlib.suppress(kx.KeyExportError):
            kx.decrypt_key_export(candidate, "pw")


REQUEST = {"id": 1, "cmd": "status", "user": "@a:test", "device": "D", "args": {"x": 1}}
ANSWERS = [{"id": 1, "ok": True, "result": {"x": 1}},
           {"id": 1, "ok": False, "error": {"code": "bad_request", "message": "no"}}]


@FUZZ
@given(data=st.data(), raw=st.binary(max_size=80))
def test_control_lines(data: st.DataObject, raw: bytes) -> None:
    lines = [raw, json.dumps(data.draw(shapes(REQUEST))).encode(),
             json.dumps(data.draw(shapes(*ANSWERS))).encode()]
    for line in lines:
        with contextlib.suppress(ControlError):
            parse_request(line)
        with contextlib.suppress(ControlError):
            parse_response(line)


EXAMPLE = (Path(__file__).parents[2] / "config.example.toml").read_text()
toml_values = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_config_tables(data: st.DataObject) -> None:
    table = data.draw(near_valid(tomllib.loads(EXAMPLE), toml_values))
    if not isinstance(table, dict):
        return
    with contextlib.suppress(ConfigError):
        parse_config(table, "fuzz.toml", Path("/nonexistent"))


@FUZZ
@given(data=st.data())
def test_config_files(data: st.DataObject) -> None:
    lines = EXAMPLE.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(lines) - 1))
        junk = data.draw(st.text(max_size=30))
        action = data.draw(st.sampled_from(["replace", "insert", "delete", "value"]))
        if action == "replace":
            lines[at] = junk
        elif action == "insert":
            lines.insert(at, junk)
        elif action == "delete":
            del lines[at]
        elif "=" in lines[at]:
            lines[at] = lines[at].split("=", 1)[0] + "= " + junk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(ConfigError):
            load_config(path)
