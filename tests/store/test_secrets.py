"""The key hierarchy: wrapping, KEK sources, value encryption and derived keys."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from e2eproxy.errors import StoreCorrupt, WrongPassphrase
from e2eproxy.store import secrets as sec

from .conftest import FakeKeyring

FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}


def test_passphrase_wrap_round_trip_and_wrong_passphrase() -> None:
    key, record = sec.new_wrapped_key(sec.PassphraseSource("right", **FAST_SCRYPT), "store-1")
    assert record["kind"] == "passphrase" and "right" not in str(record)
    assert sec.unwrap_key(sec.PassphraseSource("right"), "store-1", record) == key
    with pytest.raises(WrongPassphrase, match="wrong store passphrase"):
        sec.unwrap_key(sec.PassphraseSource("wrong"), "store-1", record)


def test_wrapped_key_is_bound_to_store_id() -> None:
    _, record = sec.new_wrapped_key(sec.PassphraseSource("pw", **FAST_SCRYPT), "store-1")
    with pytest.raises(WrongPassphrase):
        sec.unwrap_key(sec.PassphraseSource("pw"), "store-2", record)


def test_keyring_source() -> None:
    ring = FakeKeyring()
    key, record = sec.new_wrapped_key(sec.KeyringSource(ring), "sid")
    assert ("e2eproxy", "sid") in ring.items
    assert sec.unwrap_key(sec.KeyringSource(ring), "sid", record) == key
    with pytest.raises(WrongPassphrase, match="holds no key"):
        sec.unwrap_key(sec.KeyringSource(FakeKeyring()), "sid", record)


def test_key_file_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = sec.KeyFileSource(tmp_path / "store.key")
    with caplog.at_level(logging.WARNING):
        key, record = sec.new_wrapped_key(source, "sid")
    assert stat.S_IMODE((tmp_path / "store.key").stat().st_mode) == 0o600
    assert "copied database" in caplog.text and "read the data directory" in caplog.text
    assert sec.unwrap_key(source, "sid", record) == key
    (tmp_path / "store.key").unlink()
    with pytest.raises(WrongPassphrase, match="missing"):
        sec.unwrap_key(source, "sid", record)


def test_choose_source(tmp_path: Path) -> None:
    ring = FakeKeyring()
    assert sec.choose_source(tmp_path, "pw", True, ring).kind == "passphrase"
    assert sec.choose_source(tmp_path, None, True, ring).kind == "keyring"
    assert sec.choose_source(tmp_path, None, False, ring).kind == "keyfile"


def test_existing_passphrase_store_needs_passphrase(tmp_path: Path) -> None:
    with pytest.raises(WrongPassphrase, match="E2EPROXY_STORE_PASSPHRASE"):
        sec.source_for_existing("passphrase", tmp_path, None)


def test_fail_keyring_is_not_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring
    from keyring.backends import fail, null

    for backend in (fail.Keyring(), null.Keyring()):
        monkeypatch.setattr(keyring, "get_keyring", lambda b=backend: b)
        assert sec.usable_keyring() is None


def test_value_encryption_binds_row_identity() -> None:
    keys = sec.StoreKeys(b"k" * 32)
    blob = keys.encrypt(b"row-1", b"secret token")
    assert b"secret token" not in blob
    assert keys.decrypt(b"row-1", blob) == b"secret token"
    with pytest.raises(StoreCorrupt):
        keys.decrypt(b"row-2", blob)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(StoreCorrupt):
        keys.decrypt(b"row-1", bytes(tampered))
    with pytest.raises(StoreCorrupt):
        keys.decrypt(b"row-1", blob[:10])


def test_derived_keys_differ() -> None:
    data_key = b"d" * 32
    keys = sec.StoreKeys(data_key)
    assert keys.pickle_key != data_key and len(keys.pickle_key) == 32
    assert keys.index("a", "bc") != keys.index("ab", "c")
    assert keys.index("room") == sec.StoreKeys(data_key).index("room")
    assert keys.index("room") != sec.StoreKeys(b"e" * 32).index("room")


def test_remembered_indexes_are_the_computed_ones() -> None:
    """Indexes are remembered (a lease renewal names every account each round): the same
    value as a fresh computation, also once the memo was full and dropped."""
    data_key = b"m" * 32
    keys, fresh = sec.StoreKeys(data_key), sec.StoreKeys(data_key)
    parts = [("lease", f"@u{n}:x", "DEV") for n in range(sec.INDEX_CACHE + 10)]
    first = [keys.index(*p) for p in parts]
    assert [keys.index(*p) for p in parts] == first
    assert first == [sec.StoreKeys(data_key).index(*p) for p in parts[:3]] + [
        fresh.index(*p) for p in parts[3:]]
    assert len(set(first)) == len(parts)
