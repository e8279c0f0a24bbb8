"""Key backup (megolm_backup.v1.curve25519-aes-sha2) against matrix-js-sdk's and rust-sdk's data."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import vodozemac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from e2eproxy.crypto.backup import (
    BACKUP_ALGORITHM,
    BACKUP_SECRET_NAME,
    BackupDecryptionFailed,
    BackupDecryptionKey,
    BackupEncryptionKey,
    MalformedBackupData,
    SessionIdMismatch,
    UnsupportedBackupAlgorithm,
    backed_up_session,
    backup_auth_data,
    backup_version_body,
    key_backup_data,
    restore_session,
    sign_auth_data,
    verify_auth_data,
)
from e2eproxy.crypto.secret_storage import new_key, read_secret, secret_account_data
from e2eproxy.protocol.canonical import b64decode, b64encode

# matrix-js-sdk spec/test-utils/crypto-test-data/index.ts (made by generate-test-data.py).
JS_BACKUP_KEY = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
JS_BACKUP_KEY_ALT = "dh4fP2LITyJusgnb0dEq/SQK253WGObvLxXF5FEX6qc"
JS_RECOVERY_KEY = "EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d"
JS_DEVICE_SEED = b"deadbeefdeadbeefdeadbeefdeadbeef"  # TEST_DEVICE_PRIVATE_KEY_BYTES
JS_DEVICE_ED25519 = "YI/7vbGVLpGdYtuceQR8MSsKB/QjgfMXM1xqnn+0NWU"
JS_USER, JS_KEY_ID = "@alice:localhost", "ed25519:test_device"
JS_SIGNED_BACKUP_DATA = {
    "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
    "version": "1",
    "auth_data": {
        "public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo",
        "signatures": {
            "@alice:localhost": {
                "ed25519:test_device": "KDSNeumirTsd8piI0oVfv/wzg4J4HlEc7rs5XhODFcJ/YAcUdg65ajsZ"
                "G+rLI0TQOSSGjorJqcrSiSB1HRSCAA"
            }
        },
    },
    "etag": "",
    "count": 0,
}
JS_MEGOLM_SESSION_DATA = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "room_id": "!room:id",
    "sender_key": "WimPd2udAU/1S/+YBpPbmr9L+0H5H+BnAVHSwDxlPGc",
    "session_id": "ipdI6Zs/7DzFTEhiA2iGaMDfHkIYCleqXT6L+5e1/co",
    "session_key": "AQAAAABXGO+Z9jlQJhIL6ByhXrv2BwCIxkhh7MXpKLsYmXkJcWrQlirmXmD79ga1zo+I4DCtEZzyG"
    "SpDWXBC6G7ez3H4gDMBam1RE3Jm5tc+oTlIri32UkYgSL0kBkcEnttqmIXBlK8tAfJo3cJnlh7F4ltEOAqrdME6dU0z"
    "XTkqXmURqYqXSOmbP+w8xUxIYgNohmjA3x5CGApXql0+i/uXtf3K",
    "sender_claimed_keys": {"ed25519": "Bhbpt6hqMZlSH4sJV7xiEEEiPVeTWz4Vkujl1EMdIPI"},
    "forwarding_curve25519_key_chain": [],
    "m.shared_history": True,
}
JS_KEY_BACKUP_DATA = {
    "first_message_index": 1,  # sic: the generator writes 1 for a session exported at 0
    "forwarded_count": 0,
    "is_verified": False,
    "session_data": {
        "ciphertext": "r6HRk2/Im2yJe5cLP8R81aVjFWjYWPHpw7TVxphiSK1cdIDZTTK57r6MfU+0i/mTPn+/PosT74O"
        "vYwCnehy2dyqqks+Ev+uBKw3TAo0HCv7W3Rmq9XtqxikG9ts7XtcjFEkx37+qRaXtikcu0+CmUf+I5X6KStwNXb+C"
        "PnN2CGgwpn8g5+xEgSjE904QFrte4s9ygfqymgszgF7kzNICYF5g2GTlss8pdu/GLnh52AKvtT6FcqE5LC74N07BD"
        "WUycMHMMMw43F7z5GhzEnoWOXlbz+M4eTGrCYuhvcmQGNbdgzYqEXPm1z4xFhVgs84kFCtNeUc+AHZWfC2zynZ++4"
        "tpmfCYYpYEfYwQNo9Ks7o+Mh2PtAo9/GIU4xAK/uG0vizEiNYt/1QAxwgrmDxjdRe5TH4pPUtLMktRDyZKeUHJmYZ"
        "A7pcLtpVatXhXmVEQLFLDc/uusxaBxFXYkx7BQnNRoa1BE1yXRxud94s6vMsI/auhn95TG58Z0Rz9psRT4HzgDKeH"
        "f/uVbdfKR9O3gqxlB4mzZAyTCqHhUQERmGiISC2FeuKkAwVk/ZxXiFqSTUCizwXcczGbzEbC+pBJTi6jX5Pa2yI9c"
        "T5C8xaGGUzEaKdNWukcs73uvXoFl/5y0Y29PkfE8UlPWpN4kZn7hrcOllcqqV9ZMH+rBbGViIw0yZ6yQUciEJzO8G"
        "k3yz36lIT30VhCgKXMu+kELEPTRSVXqEQkCXBcfNOhgl3LIso",
        "ephemeral": "q+P1WdRtEiPIEtNuuGrRcueZxUbLnSKdsuTAkxewXgU",
        "mac": "OibmACbORhI",
    },
}
JS_ENCRYPTED_CIPHERTEXT = (
    "AwgAEnAkBmciEAyhh1j6DCk29UXJ7kv/kvayUNfuNT0iAioLxcXjFXOZ5ho3jF1/wrytlt0Lb298uMM67OxdVMi+/mMf"
    "Ypwlvi07P9cIH6CMSj8tyhYoWl0SrKY6tkPf5GWOlRSRRKbziXa96FHXvnA3V2FCAIGtAe3G4ei5RPbhkmKAFBLAen33"
    "/D6MjJVqU8Ojr5vTkgls5eyirarlVpsmnH06alDaxO8avrU0NL+Vsw26xvlUQgEMOnUJ"
)
JS_CLEAR_EVENT = {
    "type": "m.room.message",
    "room_id": "!room:id",
    "content": {"msgtype": "m.text", "body": "Hello world"},
}

# matrix-rust-sdk crates/matrix-sdk-crypto/src/backups/keys/decryption.rs, test_decrypt_key.
RUST_BACKUP_KEY = "Ha9cklU/9NqFo9WKdVfGzmqUL/9wlkdxfEitbSIPVXw"
RUST_SESSION_DATA = {
    "ephemeral": "HlLi76oV6wxHz3PCqE/bxJi6yF1HnYz5Dq3T+d/KpRw",
    "ciphertext": "MuM8E3Yc6TSAvhVGb77rQ++jE6p9dRepx63/3YPD2wACKAppkZHeFrnTH6wJ/HSyrmzo7HfwqVl6tKN"
    "pfooSTHqUf6x1LHz+h4B/Id5ITO1WYt16AaI40LOnZqTkJZCfSPuE2oxalwEHnCS3biWybutcnrBFPR3LMtaeHvvkb+"
    "k3ny9l5ZpsU9G7vCm3XoeYkWfLekWXvDhbqWrylXD0+CNUuaQJ/S527TzLd4XKctqVjjO/cCH7q+9utt9WJAfK8LGaW"
    "T/mZ3AeWjf5kiqOpKKf5Cn4n5SSil5p/pvGYmjnURvZSEeQIzHgvunIBEPtzK/MYEPOXe/P5achNGlCx+5N19Ftyp9T"
    "FaTFlTWCTi0mpD7ePfCNISrwpozAz9HZc0OhA8+1aSc7rhYFIeAYXFU326NuFIFHI5pvpSxjzPQlOA+mavIKmiRAtjl"
    "Lw11IVKTxgrdT4N8lXeMr4ndCSmvIkAzFMo1uZA4fzjiAdQJE4/2WeXFNNpvdfoYmX8Zl9CAYjpSO5HvpwkAbk4/iLE"
    "H3hDfCVUwDfMh05PdGLnxeRpiEFWSMSsJNp+OWAA+5JsF41BoRGrxoXXT+VKqlUDONd+O296Psu8Q+d8/S618",
    "mac": "GtMrurhDTwo",
}
# decryption.rs room_key() (used by test_encryption_cycle): an export without claimed keys.
RUST_ROOM_KEY = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "sender_key": "DeHIg4gwhClxzFYcmNntPNF9YtsdZbmMy8+3kzCMXHA",
    "session_id": "gM8i47Xhu0q52xLfgUXzanCMpLinoyVyH7R58cBuVBU",
    "room_id": "!DovneieKSTkdHKpIXy:morpheus.localhost",
    "session_key": "AQAAAABvWMNZjKFtebYIePKieQguozuoLgzeY6wKcyJjLJcJtQgy1dPqTBD12U+XrYLrRHnlKmxoo"
    "zlhFqJl456+9hlHCL+yq+6ScFuBHtJepnY1l2bdLb4T0JMDkNsNErkiLiLnD6yp3JDSjIhkdHxmup/huygrmroq6/L5"
    "TaThEoqvW4DPIuO14btKudsS34FF82pwjKS4p6Mlch+0efHAblQV",
    "sender_claimed_keys": {},
    "forwarding_curve25519_key_chain": [],
}
# olm/group_sessions/mod.rs, test_deserialize_backed_up_key: a forwarded key with a chain of two.
RUST_FORWARDED = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "room_id": "!room:id",
    "sender_key": "FOvlmz18LLI3k/llCpqRoKT90+gFF8YhuL+v1YBXHlw",
    "session_id": "/2K+V777vipCxPZ0gpY9qcpz1DYaXwuMRIu0UEP0Wa0",
    "session_key": "AQAAAAAclzWVMeWBKH+B/WMowa3rb4ma3jEl6n5W4GCs9ue65CruzD3ihX+85pZ9hsV9Bf6fvhjp7"
    "6WNRajoJYX0UIt7aosjmu0i+H+07hEQ0zqTKpVoSH0ykJ6stAMhdr6Q4uW5crBmdTTBIsqmoWsNJZKKoE2+ldYrZ1lr"
    "FeaJbjBIY/9ivle++74qQsT2dIKWPanKc9Q2Gl8LjESLtFBD9Fmt",
    "sender_claimed_keys": {"ed25519": "F4P7f1Z0RjbiZMgHk1xBCG3KC4/Ng9PmxLJ4hQ13sHA"},
    "forwarding_curve25519_key_chain": [
        "DBPC2zr6c9qimo9YRFK3RVr0Two/I6ODb9mbsToZN3Q",
        "bBc/qzZFOOKshMMT+i4gjS/gWPDoKfGmETs9yfw9430",
    ],
}


@pytest.fixture
def js_key() -> BackupDecryptionKey:
    return BackupDecryptionKey.from_base64(JS_BACKUP_KEY)


def _signer(seed: bytes) -> Any:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return lambda message: b64encode(private.sign(message))


def _public(seed: bytes) -> str:
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _exported(session: vodozemac.InboundGroupSession, room_id: str = "!r:x") -> dict[str, Any]:
    key = session.export_at(session.first_known_index)
    assert key is not None
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "room_id": room_id,
        "sender_key": "WimPd2udAU/1S/+YBpPbmr9L+0H5H+BnAVHSwDxlPGc",
        "session_id": session.session_id,
        "session_key": key.to_base64(),
        "sender_claimed_keys": {"ed25519": "Bhbpt6hqMZlSH4sJV7xiEEEiPVeTWz4Vkujl1EMdIPI"},
        "forwarding_curve25519_key_chain": [],
        "m.shared_history": False,
    }


# --- the decryption key and auth_data --------------------------------------------------------


def test_js_sdk_key_encodings(js_key: BackupDecryptionKey) -> None:
    assert js_key.public_key == JS_SIGNED_BACKUP_DATA["auth_data"]["public_key"]  # type: ignore[index]
    assert js_key.to_recovery_key() == JS_RECOVERY_KEY
    assert js_key.to_base64() == JS_BACKUP_KEY.rstrip("=")  # written unpadded
    assert BackupDecryptionKey.from_recovery_key(JS_RECOVERY_KEY).to_bytes() == js_key.to_bytes()
    assert BackupDecryptionKey.from_base64(js_key.to_base64()).to_bytes() == js_key.to_bytes()
    assert bytes(js_key.to_bytes()).hex().startswith("77076d0a")  # rust-sdk's TEST_KEY


def test_js_sdk_signed_backup_version(js_key: BackupDecryptionKey) -> None:
    auth_data = backup_auth_data(JS_SIGNED_BACKUP_DATA)
    assert js_key.matches(auth_data)
    assert not BackupDecryptionKey.from_base64(JS_BACKUP_KEY_ALT).matches(auth_data)
    assert _public(JS_DEVICE_SEED) == JS_DEVICE_ED25519
    assert verify_auth_data(auth_data, JS_USER, JS_KEY_ID, JS_DEVICE_ED25519)
    # Ed25519 is deterministic: signing the unsigned auth_data gives the vector's signature.
    signed = sign_auth_data(js_key.auth_data(), JS_USER, JS_KEY_ID, _signer(JS_DEVICE_SEED))
    assert signed == auth_data


def test_auth_data_signed_by_device_then_master() -> None:
    key = BackupDecryptionKey.generate()
    device_seed, master_seed = b"d" * 32, b"m" * 32
    master_id = f"ed25519:{_public(master_seed)}"
    signed = sign_auth_data(key.auth_data(), "@u:x", "ed25519:DEV", _signer(device_seed))
    signed = sign_auth_data(signed, "@u:x", master_id, _signer(master_seed))
    assert set(signed["signatures"]["@u:x"]) == {"ed25519:DEV", master_id}
    assert verify_auth_data(signed, "@u:x", "ed25519:DEV", _public(device_seed))
    assert verify_auth_data(signed, "@u:x", master_id, _public(master_seed))
    assert not verify_auth_data(signed, "@u:x", "ed25519:DEV", _public(master_seed))
    swapped = dict(signed, public_key=BackupDecryptionKey.generate().public_key)
    assert not verify_auth_data(swapped, "@u:x", "ed25519:DEV", _public(device_seed))
    body = backup_version_body(signed)
    assert body == {"algorithm": BACKUP_ALGORITHM, "auth_data": signed}
    assert key.matches(backup_auth_data(body))


@pytest.mark.parametrize(
    ("info", "error"),
    [
        ({"algorithm": "org.example.other", "auth_data": {}}, UnsupportedBackupAlgorithm),
        ({"algorithm": BACKUP_ALGORITHM}, MalformedBackupData),
        ({"algorithm": BACKUP_ALGORITHM, "auth_data": {"public_key": "AAAA"}}, MalformedBackupData),
        ({"algorithm": BACKUP_ALGORITHM, "auth_data": {"public_key": 5}}, MalformedBackupData),
        ([], MalformedBackupData),
    ],
)
def test_bad_backup_versions(info: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        backup_auth_data(info)


def test_matches_is_false_for_junk(js_key: BackupDecryptionKey) -> None:
    for auth_data in (None, {}, {"public_key": "!!"}, {"public_key": b64encode(bytes(31))}):
        assert not js_key.matches(auth_data)
    padded = JS_SIGNED_BACKUP_DATA["auth_data"]["public_key"] + "="  # type: ignore[index]
    assert js_key.matches({"public_key": padded})


def test_key_sizes_and_repr(js_key: BackupDecryptionKey) -> None:
    with pytest.raises(ValueError):
        BackupDecryptionKey(bytes(31))
    with pytest.raises(MalformedBackupData):
        BackupDecryptionKey.from_base64(b64encode(bytes(33)))
    with pytest.raises(MalformedBackupData):
        BackupEncryptionKey(b64encode(bytes(31)))
    assert JS_BACKUP_KEY.rstrip("=") not in repr(js_key) and js_key.public_key in repr(js_key)
    assert BackupDecryptionKey.generate().to_bytes() != BackupDecryptionKey.generate().to_bytes()


def test_backup_key_travels_through_secret_storage(js_key: BackupDecryptionKey) -> None:
    storage_key = new_key()
    content = secret_account_data(storage_key, BACKUP_SECRET_NAME, js_key.to_base64())
    secret = read_secret(storage_key, BACKUP_SECRET_NAME, content)
    assert BackupDecryptionKey.from_base64(secret).public_key == js_key.public_key


# --- restoring entries -----------------------------------------------------------------------


def test_js_sdk_entry_restores_and_decrypts_its_megolm_event(js_key: BackupDecryptionKey) -> None:
    session_id = JS_MEGOLM_SESSION_DATA["session_id"]
    restored = restore_session(js_key, "!room:id", str(session_id), JS_KEY_BACKUP_DATA)
    assert restored == JS_MEGOLM_SESSION_DATA
    session = vodozemac.InboundGroupSession.import_session(
        vodozemac.ExportedSessionKey(restored["session_key"])
    )
    decrypted = session.decrypt(vodozemac.MegolmMessage.from_base64(JS_ENCRYPTED_CIPHERTEXT))
    assert json.loads(decrypted.plaintext) == JS_CLEAR_EVENT
    assert decrypted.message_index == 0


def test_js_sdk_entry_refuses_wrong_key_and_wrong_session_id(js_key: BackupDecryptionKey) -> None:
    with pytest.raises(BackupDecryptionFailed):
        restore_session(
            BackupDecryptionKey.from_base64(JS_BACKUP_KEY_ALT), "!room:id", "x", JS_KEY_BACKUP_DATA
        )
    other = str(RUST_ROOM_KEY["session_id"])
    with pytest.raises(SessionIdMismatch):
        restore_session(js_key, "!room:id", other, JS_KEY_BACKUP_DATA)


def test_rust_sdk_entry_decrypts() -> None:
    key = BackupDecryptionKey.from_base64(RUST_BACKUP_KEY)
    backed_up = key.decrypt_session_data(RUST_SESSION_DATA)
    assert backed_up["algorithm"] == "m.megolm.v1.aes-sha2"
    assert backed_up["sender_key"] == "wREG/hBdSspoqM9xPCEXd/4YwjpBFXlsobRkyDTo/Q8"
    session_key = vodozemac.ExportedSessionKey(backed_up["session_key"])
    session_id = vodozemac.InboundGroupSession.import_session(session_key).session_id
    entry: dict[str, Any] = {"first_message_index": 0, "forwarded_count": 0, "is_verified": False}
    entry["session_data"] = RUST_SESSION_DATA
    restored = restore_session(key, "!r:x", session_id, entry)
    assert restored["session_id"] == session_id and restored["m.shared_history"] is False


def test_tampered_mac_and_ephemeral_are_refused(js_key: BackupDecryptionKey) -> None:
    for field in ("mac", "ephemeral"):
        data = copy.deepcopy(JS_KEY_BACKUP_DATA)
        raw = bytearray(b64decode(data["session_data"][field]))  # type: ignore[index]
        raw[0] ^= 1
        data["session_data"][field] = b64encode(bytes(raw))  # type: ignore[index]
        with pytest.raises(BackupDecryptionFailed):
            restore_session(js_key, "!room:id", "ipdI6Zs/7DzFTEhiA2iGaMDfHkIYCleqXT6L+5e1/co", data)


@pytest.mark.parametrize(
    "session_data",
    [
        None,
        {},
        {"ciphertext": "%%", "mac": "OibmACbORhI", "ephemeral": "q+P1WdRtEiPIEtNuuGrRcueZxU"},
        {**JS_KEY_BACKUP_DATA["session_data"], "ephemeral": b64encode(bytes(31))},  # type: ignore[dict-item]
        {**JS_KEY_BACKUP_DATA["session_data"], "mac": 7},  # type: ignore[dict-item]
    ],
)
def test_malformed_session_data(js_key: BackupDecryptionKey, session_data: Any) -> None:
    with pytest.raises(MalformedBackupData):
        js_key.decrypt_session_data(session_data)


def _encrypted_plaintext(key: BackupDecryptionKey, plaintext: bytes) -> dict[str, Any]:
    public = vodozemac.Curve25519PublicKey.from_base64(key.public_key)
    message = vodozemac.PkEncryption.from_key(public).encrypt(plaintext)
    session_data = {
        "ciphertext": b64encode(message.ciphertext),
        "mac": b64encode(message.mac),
        "ephemeral": b64encode(message.ephemeral_key),
    }
    return {"first_message_index": 0, "forwarded_count": 0, "is_verified": False,
            "session_data": session_data}  # fmt: skip


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({**RUST_ROOM_KEY, "algorithm": "m.megolm.v2.aes-sha2"}).encode(),
        json.dumps({**RUST_ROOM_KEY, "session_key": "AAAA"}).encode(),
        json.dumps({**RUST_ROOM_KEY, "session_key": 5}).encode(),
        json.dumps({**RUST_ROOM_KEY, "sender_key": None}).encode(),
        json.dumps({**RUST_ROOM_KEY, "sender_claimed_keys": {"ed25519": 1}}).encode(),
        json.dumps({**RUST_ROOM_KEY, "forwarding_curve25519_key_chain": "x"}).encode(),
    ],
)
def test_anyone_can_write_entries_so_plaintexts_are_checked(plaintext: bytes) -> None:
    # v1's MAC covers no data: whoever knows the public key (the server) can encrypt anything.
    key = BackupDecryptionKey.generate()
    with pytest.raises(MalformedBackupData):
        entry = _encrypted_plaintext(key, plaintext)
        restore_session(key, "!r:x", str(RUST_ROOM_KEY["session_id"]), entry)
    with pytest.raises(MalformedBackupData):
        restore_session(key, "!r:x", "x", {"session_data": None})
    with pytest.raises(MalformedBackupData):
        restore_session(key, "!r:x", "x", [])


# --- uploading entries ------------------------------------------------------------------------


def test_round_trip_restores_a_session_that_decrypts_real_messages() -> None:
    outbound = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(outbound.session_key)  # shared before encrypting
    messages = [outbound.encrypt(f"message {i}".encode()).to_base64() for i in range(3)]
    decryption_key = BackupDecryptionKey.generate()
    encryption_key = BackupEncryptionKey.from_auth_data(decryption_key.auth_data())
    exported = _exported(inbound)
    uploaded = json.loads(json.dumps(key_backup_data(encryption_key, exported)))
    assert uploaded["first_message_index"] == 0
    assert (uploaded["forwarded_count"], uploaded["is_verified"]) == (0, False)
    assert set(uploaded["session_data"]) == {"ephemeral", "ciphertext", "mac"}
    restored = restore_session(decryption_key, "!r:x", inbound.session_id, uploaded)
    assert restored == exported
    session = vodozemac.InboundGroupSession.import_session(
        vodozemac.ExportedSessionKey(restored["session_key"])
    )
    for index, message in enumerate(messages):
        decrypted = session.decrypt(vodozemac.MegolmMessage.from_base64(message))
        assert decrypted.plaintext == f"message {index}".encode()
        assert decrypted.message_index == index


def test_session_data_fields_are_not_in_to_base64_order() -> None:
    # vodozemac's Message.to_base64() returns (ephemeral, mac, ciphertext); decode ours the
    # documented way, Message.from_base64(ciphertext, mac, ephemeral), to prove no swap.
    decryption_key = BackupDecryptionKey.generate()
    encryption_key = BackupEncryptionKey(decryption_key.public_key)
    data = encryption_key.encrypt_session_data({"hello": "world"})
    message = vodozemac.Message.from_base64(data["ciphertext"], data["mac"], data["ephemeral"])
    public = vodozemac.Curve25519PublicKey.from_base64(decryption_key.public_key)
    assert message.to_base64() == (data["ephemeral"], data["mac"], data["ciphertext"])
    assert decryption_key.decrypt_session_data(data) == {"hello": "world"}
    assert public == vodozemac.Curve25519PublicKey.from_bytes(b64decode(encryption_key.public_key))


def test_first_message_index_comes_from_the_session_key() -> None:
    outbound = vodozemac.GroupSession()
    outbound.encrypt(b"zero")
    later = vodozemac.InboundGroupSession(outbound.session_key)  # known from index 1
    key = BackupDecryptionKey.generate()
    uploaded = key_backup_data(
        BackupEncryptionKey(key.public_key), _exported(later), forwarded_count=1, is_verified=True
    )
    assert (uploaded["first_message_index"], uploaded["forwarded_count"]) == (1, 1)
    assert uploaded["is_verified"] is True


def test_rust_sdk_room_keys_round_trip() -> None:
    key = BackupDecryptionKey.generate()
    encryption_key = BackupEncryptionKey(key.public_key)
    for room_key in (RUST_ROOM_KEY, RUST_FORWARDED):
        restored = restore_session(
            key,
            str(room_key["room_id"]),
            str(room_key["session_id"]),
            key_backup_data(encryption_key, room_key),
        )
        assert restored == {**room_key, "m.shared_history": False}
    assert len(backed_up_session(RUST_FORWARDED)["forwarding_curve25519_key_chain"]) == 2


def test_backed_up_session_drops_room_and_session_id() -> None:
    backed_up = backed_up_session(JS_MEGOLM_SESSION_DATA)
    assert "room_id" not in backed_up and "session_id" not in backed_up
    assert backed_up["m.shared_history"] is True
    spec_named = {k: v for k, v in JS_MEGOLM_SESSION_DATA.items() if k != "m.shared_history"}
    assert backed_up_session({**spec_named, "shared_history": True})["m.shared_history"] is True
    assert backed_up_session(spec_named)["m.shared_history"] is False


def test_upload_refuses_bad_exports() -> None:
    key = BackupEncryptionKey(BackupDecryptionKey.generate().public_key)
    with pytest.raises(SessionIdMismatch):
        key_backup_data(key, {**RUST_ROOM_KEY, "session_id": JS_MEGOLM_SESSION_DATA["session_id"]})
    with pytest.raises(MalformedBackupData):
        key_backup_data(key, {**RUST_ROOM_KEY, "session_key": "junk"})
    with pytest.raises(MalformedBackupData):
        backed_up_session({**RUST_ROOM_KEY, "algorithm": "m.olm.v1.curve25519-aes-sha2"})


def test_a_low_order_public_key_is_refused() -> None:
    with pytest.raises(MalformedBackupData):
        BackupEncryptionKey(b64encode(bytes(32))).encrypt_session_data({"a": 1})


def test_restored_entries_are_what_the_key_export_importer_takes(
    js_key: BackupDecryptionKey,
) -> None:
    from e2eproxy.store.room_keys import parse_sessions

    session_id = str(JS_MEGOLM_SESSION_DATA["session_id"])
    restored = restore_session(js_key, "!room:id", session_id, JS_KEY_BACKUP_DATA)
    [record] = parse_sessions([restored])
    assert (record.room_id, record.session_id, record.first_known_index) == (
        "!room:id",
        session_id,
        0,
    )
    assert record.signing_key == "Bhbpt6hqMZlSH4sJV7xiEEEiPVeTWz4Vkujl1EMdIPI"
    assert record.shared_history and record.imported
