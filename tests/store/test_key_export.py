"""The key export file format against matrix-rust-sdk's vector and matrix-nio, both ways."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from e2eproxy import key_export as kx

from .conftest import TEST_EXPORT

PASSPHRASE = "1234"

SESSION = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "room_id": "!room:example.org",
    "sender_key": "SENDERCURVE",
    "session_id": "SESSIONID",
    "session_key": "AQAAAAB...",
    "sender_claimed_keys": {"ed25519": "ED"},
    "forwarding_curve25519_key_chain": [],
    "m.shared_history": False,
}
FAST = kx.MIN_EXPORT_ROUNDS


def _payload(text: str) -> bytes:
    body = "".join(text.strip().splitlines()[1:-1])
    return base64.b64decode(body + "=" * (-len(body) % 4))


def _armor(payload: bytes) -> str:
    return f"{kx.HEADER}\n{base64.b64encode(payload).decode()}\n{kx.FOOTER}"


def test_rust_sdk_vector_decrypts() -> None:
    sessions = kx.decrypt_key_export(TEST_EXPORT, PASSPHRASE)
    assert sessions, "the rust-sdk vector holds at least one session"
    assert all(s["algorithm"] == "m.megolm.v1.aes-sha2" for s in sessions)
    assert all(s["room_id"].startswith("!") for s in sessions)


def test_rust_sdk_vector_wrong_passphrase() -> None:
    with pytest.raises(kx.BadMac):
        kx.decrypt_key_export(TEST_EXPORT, "12345")


def test_round_trip_and_format() -> None:
    text = kx.encrypt_key_export([SESSION], "pw", rounds=FAST)
    assert text.startswith(kx.HEADER + "\n") and text.rstrip().endswith(kx.FOOTER)
    payload = _payload(text)
    assert payload[0] == 1
    assert int.from_bytes(payload[33:37], "big") == FAST
    assert payload[17 + 8] & 0x80 == 0, "IV bit 63 is cleared"
    assert kx.decrypt_key_export(text, "pw") == [SESSION]


def test_export_refuses_weak_rounds() -> None:
    with pytest.raises(ValueError):
        kx.encrypt_key_export([SESSION], "pw", rounds=10_000)


def test_matrix_nio_reads_our_export(tmp_path: Path) -> None:
    from nio.crypto import key_export as nio_kx

    path = tmp_path / "keys.txt"
    path.write_text(kx.encrypt_key_export([SESSION], "pw", rounds=FAST))
    assert json.loads(nio_kx.decrypt_and_read(str(path), "pw")) == [SESSION]


def test_we_read_matrix_nio_export(tmp_path: Path) -> None:
    from nio.crypto import key_export as nio_kx

    path = tmp_path / "keys.txt"
    nio_kx.encrypt_and_save(json.dumps([SESSION]).encode(), str(path), "pw", count=FAST)
    assert kx.decrypt_key_export(path.read_text(), "pw") == [SESSION]


@pytest.fixture(scope="module")
def good() -> str:
    return kx.encrypt_key_export([SESSION], "pw", rounds=FAST)


def test_not_armored(good: str) -> None:
    with pytest.raises(kx.NotArmored):
        kx.decrypt_key_export(good.replace(kx.HEADER, ""), "pw")
    with pytest.raises(kx.NotArmored):
        kx.decrypt_key_export(f"{kx.HEADER}\n!!!notbase64\n{kx.FOOTER}", "pw")


def test_truncated(good: str) -> None:
    with pytest.raises(kx.TruncatedExport):
        kx.decrypt_key_export(_armor(_payload(good)[:60]), "pw")


def test_unknown_version(good: str) -> None:
    with pytest.raises(kx.UnsupportedVersion):
        kx.decrypt_key_export(_armor(b"\x02" + _payload(good)[1:]), "pw")


def test_flipped_ciphertext_bit_is_bad_mac(good: str) -> None:
    payload = bytearray(_payload(good))
    payload[40] ^= 1
    with pytest.raises(kx.BadMac):
        kx.decrypt_key_export(_armor(bytes(payload)), "pw")


def test_cut_tail_is_bad_mac(good: str) -> None:
    with pytest.raises(kx.BadMac):
        kx.decrypt_key_export(_armor(_payload(good)[:-5]), "pw")


def _export_of(plaintext: bytes, monkeypatch: pytest.MonkeyPatch) -> str:
    # Encrypt arbitrary bytes by swapping the JSON encoder for this one call.
    monkeypatch.setattr(kx.json, "dumps", lambda *_a, **_k: plaintext.decode("latin-1"))
    text = kx.encrypt_key_export([], "pw", rounds=FAST)
    monkeypatch.undo()
    return text


@pytest.mark.parametrize(
    "plaintext", [b"not json", b'{"a": 1}', b"[" * 100_000 + b"]" * 100_000]
)
def test_not_a_json_list(plaintext: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(kx.InvalidExport):
        kx.decrypt_key_export(_export_of(plaintext, monkeypatch), "pw")


def test_entries_that_are_no_session_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [1, {**SESSION, "room_id": None}, SESSION, {**SESSION, "sender_claimed_keys": 2}]
    text = _export_of(json.dumps(entries).encode(), monkeypatch)
    assert kx.decrypt_key_export(text, "pw") == [SESSION]


def test_all_errors_are_key_export_errors() -> None:
    for cls in (kx.NotArmored, kx.TruncatedExport, kx.UnsupportedVersion, kx.BadMac):
        assert issubclass(cls, kx.KeyExportError)
