"""Secret storage (m.secret_storage.v1.aes-hmac-sha2) against matrix-rust-sdk's vectors."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from e2eproxy.crypto import secret_storage
from e2eproxy.crypto.recovery_key import BadParity, NotBase58, encode_recovery_key
from e2eproxy.crypto.secret_storage import (
    AES_HMAC_SHA2,
    CROSS_SIGNING_MASTER,
    CROSS_SIGNING_SELF_SIGNING,
    CROSS_SIGNING_USER_SIGNING,
    MalformedSecretStorage,
    NotEncryptedForKey,
    SecretStorageKey,
    UnsupportedAlgorithm,
    WrongKey,
    check_key,
    decrypt_secret,
    default_key_content,
    default_key_id,
    derive_key,
    describe_key,
    encrypt_secret,
    new_key,
    open_key,
    read_secret,
    secret_account_data,
)
from e2eproxy.protocol.canonical import b64decode, b64encode

# matrix-rust-sdk crates/matrix-sdk/tests/integration/encryption/secret_storage.rs: a recovery
# key, its description, and the three cross-signing secrets it encrypts (padded base64), with
# the public keys that the same test's /keys/query answers for those private keys.
RECOVERY_KEY = "EsTj 3yST y93F SLpB jJsz eAXc 2XzA ygD3 w69H fGaN TKBj jXEd"
KEY_ID = "bmur2d9ypPUH1msSwCxQOJkuKRmJI55e"
DESCRIPTION = {
    "algorithm": AES_HMAC_SHA2,
    "iv": "xv5b6/p3ExEw++wTyfSHEg==",
    "mac": "ujBBbXahnTAMkmPUX2/0+VTfUh63pGyVRuBcDMgmJC8=",
}
MASTER_SECRET = {
    "ciphertext": "lCRSSA1lChONEXj/8RyogsgAa8ouQwYDnLr4XBCheRikrZykLRzPCx3doCE=",
    "iv": "bdfCwu+ECYgZ/jWTkGrQ/A==",
    "mac": "NXeV1dZaOe2JLvQ6Hh6tFto7AgFFdaQnY0l9pruwdtE=",
}
CROSS_SIGNING = {
    CROSS_SIGNING_MASTER: (MASTER_SECRET, "fKJdf5b3ga1hshUT5obkBteMNTtLkfy8qh4h5/XLNew"),
    CROSS_SIGNING_SELF_SIGNING: (
        {
            "ciphertext": "+B9WD02IvtQ8S4OaquhuYEZAx20xvz0oTN7r2VM9VOBxmlOyi+KkkWOvLAo=",
            "iv": "3BCaKGCaSMkg1x9WnTqUmw==",
            "mac": "xQEDxQbPH0bYeZUFC3wYJh0lsLkP2amcFGdaZ3VdfQg=",
        },
        "vsEoa0HHxc8hmlWgoohTQBGWcCRh1BFoTzI8HNIxg5Q",
    ),
    CROSS_SIGNING_USER_SIGNING: (
        {
            "ciphertext": "atqNy5IDzYRkRC+lkKoflwsyHkd0dr4UeoViwJdUzexiq0M8h1i8JMkADNg=",
            "iv": "bjb1V2n9YmA8j31Z9muMqQ==",
            "mac": "vusvNuV8Kkq50VxtC78oioofVBurnTTVEhiRyZkfu/4=",
        },
        "IGfFj6KhzqBWxiMm6/e+Pu/x/5NV6a7iEe8AKhuRiq0",
    ),
}

# matrix-rust-sdk crates/matrix-sdk-crypto/src/secret_storage.rs, from_account_data_and_passphrase.
PASSPHRASE = "It's a secret to everybody"
PASSPHRASE_KEY_ID = "DZkbKc0RtKSq0z8V61w6KBmJCK6OCiIu"
PASSPHRASE_DESCRIPTION = {
    "algorithm": AES_HMAC_SHA2,
    "iv": "gH2iNpiETFhApvW6/FFEJQ",
    "mac": "9Lw12m5SKDipNghdQXKjgpfdj1/K7HFI2brO+UWAGoM",
    "passphrase": {
        "algorithm": "m.pbkdf2",
        "salt": "IuLnH7S85YtZmkkBJKwNUKxWF42g9O1H",
        "iterations": 10,
    },
}


def _ed25519_public(seed_b64: str) -> str:
    private = Ed25519PrivateKey.from_private_bytes(b64decode(seed_b64))
    return b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


@pytest.fixture
def key() -> SecretStorageKey:
    return open_key(RECOVERY_KEY, KEY_ID, DESCRIPTION)


# --- vectors -------------------------------------------------------------------------------


def test_rust_sdk_recovery_key_opens_its_description(key: SecretStorageKey) -> None:
    assert key.key_id == KEY_ID
    assert key.account_data_type == f"m.secret_storage.key.{KEY_ID}"
    assert key.recovery_key() == RECOVERY_KEY


@pytest.mark.parametrize("name", sorted(CROSS_SIGNING))
def test_rust_sdk_cross_signing_secrets_decrypt(key: SecretStorageKey, name: str) -> None:
    encrypted, public_key = CROSS_SIGNING[name]
    seed = read_secret(key, name, {"encrypted": {KEY_ID: encrypted}})
    assert _ed25519_public(seed) == public_key
    if name == CROSS_SIGNING_MASTER:
        assert seed == "VcY1+LNyV6aSMne8mvi4lc/q+JiCHe+m6+hKLtgLP30="


def test_encryption_reproduces_the_rust_sdk_vector(
    key: SecretStorageKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the vector's IV, our encryption must give its ciphertext and MAC byte for byte.
    monkeypatch.setattr(secret_storage, "_new_iv", lambda: b64decode(MASTER_SECRET["iv"]))
    seed = "VcY1+LNyV6aSMne8mvi4lc/q+JiCHe+m6+hKLtgLP30="
    ours = encrypt_secret(key.key, CROSS_SIGNING_MASTER, seed)
    assert ours == {k: v.rstrip("=") for k, v in MASTER_SECRET.items()}
    monkeypatch.setattr(secret_storage, "_new_iv", lambda: b64decode(DESCRIPTION["iv"]))
    assert describe_key(key.key) == {k: v.rstrip("=") for k, v in DESCRIPTION.items()}


def test_rust_sdk_passphrase_vector() -> None:
    opened = open_key(PASSPHRASE, PASSPHRASE_KEY_ID, PASSPHRASE_DESCRIPTION)
    assert opened.key_id == PASSPHRASE_KEY_ID
    params = PASSPHRASE_DESCRIPTION["passphrase"]
    assert isinstance(params, dict)
    # An independent PBKDF2-HMAC-SHA-512 (hashlib) agrees with the derivation.
    expected = hashlib.pbkdf2_hmac("sha512", PASSPHRASE.encode(), params["salt"].encode(), 10, 32)
    assert derive_key(PASSPHRASE, PASSPHRASE_DESCRIPTION) == expected == opened.key
    with pytest.raises(WrongKey):
        open_key("It's a secret to nobody", PASSPHRASE_KEY_ID, PASSPHRASE_DESCRIPTION)


def test_the_passphrase_key_also_opens_as_a_recovery_key() -> None:
    derived = derive_key(PASSPHRASE, PASSPHRASE_DESCRIPTION)
    opened = open_key(encode_recovery_key(derived), PASSPHRASE_KEY_ID, PASSPHRASE_DESCRIPTION)
    assert opened.key == derived


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mac", "NXeV1dZaOe2JLvQ6Hh6tFtgFFdaQnY0l9pruwdtE"),  # 30 bytes (rust-sdk vector)
        ("iv", "bdfCwu+gZ/jWTkGrQ/A"),  # 14 bytes (rust-sdk vector)
        ("iv", "not base64!"),
        ("ciphertext", "%%%"),
        ("mac", None),
        ("ciphertext", 5),
    ],
)
def test_malformed_encrypted_secret(key: SecretStorageKey, field: str, value: Any) -> None:
    encrypted = dict(MASTER_SECRET, **{field: value})
    with pytest.raises(MalformedSecretStorage):
        decrypt_secret(key.key, CROSS_SIGNING_MASTER, encrypted)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"iv": b64encode(bytes(14)), "mac": b64encode(bytes(32))}, MalformedSecretStorage),
        ({"iv": b64encode(bytes(16)), "mac": b64encode(bytes(10))}, MalformedSecretStorage),
        ({"algorithm": "m.secret_storage.custom"}, UnsupportedAlgorithm),
        ({"iv": b64encode(bytes(16))}, WrongKey),
    ],
)
def test_rust_sdk_invalid_key_info(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        open_key(RECOVERY_KEY, KEY_ID, {**DESCRIPTION, **change})


def test_without_iv_and_mac_any_passphrase_is_accepted() -> None:
    # rust-sdk accepts_any_passphrase_if_mac_and_iv_are_missing, as the spec says.
    description = {
        "algorithm": AES_HMAC_SHA2,
        "passphrase": {"algorithm": "m.pbkdf2", "salt": "salty goodness", "iterations": 100},
    }
    opened = open_key("It's a secret to nobody", "my_new_key_id", description)
    assert opened.key == hashlib.pbkdf2_hmac(
        "sha512", b"It's a secret to nobody", b"salty goodness", 100, 32
    )
    with pytest.raises(UnsupportedAlgorithm):  # the algorithm is still checked
        check_key(opened.key, {"algorithm": "m.secret_storage.v2"})


# --- round trips and refusals --------------------------------------------------------------


def test_random_key_round_trip() -> None:
    created = new_key(name="Recovery key")
    assert len(created.key_id) == 32 and created.key_id.isalnum()
    assert created.description["name"] == "Recovery key"
    assert "passphrase" not in created.description
    content = secret_account_data(created, "m.megolm_backup.v1", "backup key text ✓")
    assert list(content["encrypted"]) == [created.key_id]
    reopened = open_key(created.recovery_key(), created.key_id, created.description)
    assert read_secret(reopened, "m.megolm_backup.v1", content) == "backup key text ✓"


def test_passphrase_key_round_trip() -> None:
    created = new_key(passphrase="correct horse", iterations=10)
    params = created.description["passphrase"]
    assert params["algorithm"] == "m.pbkdf2" and params["iterations"] == 10
    assert params["bits"] == 256 and len(params["salt"]) == 32
    content = secret_account_data(created, "secret", "s3cret")
    reopened = open_key("correct horse", created.key_id, created.description)
    assert reopened.key == created.key
    assert read_secret(reopened, "secret", content) == "s3cret"
    with pytest.raises(WrongKey):
        open_key("wrong horse", created.key_id, created.description)
    with pytest.raises(WrongKey):  # a valid recovery key, of another key
        open_key(new_key().recovery_key(), created.key_id, created.description)


def test_new_keys_default_to_500000_iterations() -> None:
    assert inspect.signature(new_key).parameters["iterations"].default == 500_000


def test_a_passphrase_that_is_an_old_recovery_key_still_works() -> None:
    old = new_key().recovery_key()
    created = new_key(passphrase=old, iterations=10)
    assert open_key(old, created.key_id, created.description).key == created.key


def test_text_that_is_no_key_without_a_passphrase_reports_the_format() -> None:
    with pytest.raises(NotBase58):
        open_key("my passphrase 0", KEY_ID, DESCRIPTION)
    with pytest.raises(BadParity):
        open_key(RECOVERY_KEY[:-1] + "e", KEY_ID, DESCRIPTION)
    with pytest.raises(WrongKey):
        open_key(new_key().recovery_key(), KEY_ID, DESCRIPTION)


def test_tampering_and_wrong_keys_are_refused(key: SecretStorageKey) -> None:
    encrypted = encrypt_secret(key.key, "name", "plaintext")
    flipped_mac = bytearray(b64decode(encrypted["mac"]))
    flipped_mac[0] ^= 1
    flipped_ciphertext = bytearray(b64decode(encrypted["ciphertext"]))
    flipped_ciphertext[-1] ^= 1
    for bad in (
        dict(encrypted, mac=b64encode(bytes(flipped_mac))),
        dict(encrypted, ciphertext=b64encode(bytes(flipped_ciphertext))),
    ):
        with pytest.raises(WrongKey):
            decrypt_secret(key.key, "name", bad)
    with pytest.raises(WrongKey):  # the name is bound in by the HKDF info
        decrypt_secret(key.key, "other name", encrypted)
    with pytest.raises(WrongKey):
        decrypt_secret(new_key().key, "name", encrypted)
    assert decrypt_secret(key.key, "name", encrypted) == "plaintext"


def test_output_is_unpadded_and_padded_input_is_read(key: SecretStorageKey) -> None:
    for _ in range(20):
        encrypted = encrypt_secret(key.key, "n", "x" * 7)  # 7-byte ciphertext needs padding
        assert not any(value.endswith("=") for value in encrypted.values())
        iv = b64decode(encrypted["iv"])
        assert iv[8] & 0x80 == 0  # bit 63 cleared
        padded = {k: v + "=" * (-len(v) % 4) for k, v in encrypted.items()}
        assert decrypt_secret(key.key, "n", padded) == "x" * 7


def test_account_data_lookups(key: SecretStorageKey) -> None:
    with pytest.raises(NotEncryptedForKey):
        read_secret(key, CROSS_SIGNING_MASTER, {"encrypted": {"other": MASTER_SECRET}})
    junk: list[Any] = [{}, {"encrypted": []}, None, "x"]
    for content in junk:
        with pytest.raises(MalformedSecretStorage):
            read_secret(key, CROSS_SIGNING_MASTER, content)
    with pytest.raises(MalformedSecretStorage):
        decrypt_secret(key.key, CROSS_SIGNING_MASTER, ["not", "an", "object"])


def test_non_utf8_secret_is_malformed(key: SecretStorageKey) -> None:
    # A correctly MACed ciphertext whose plaintext is not UTF-8 (only a key holder makes one).
    encrypted = encrypt_secret(key.key, "n", "ab")
    aes_key, mac_key = secret_storage._expand(key.key, "n")
    raw = secret_storage._ctr(aes_key, b64decode(encrypted["iv"]), b"\xff\xfe")
    mac = secret_storage._hmac(mac_key)
    mac.update(raw)
    bad = dict(encrypted, ciphertext=b64encode(raw), mac=b64encode(mac.finalize()))
    with pytest.raises(MalformedSecretStorage):
        decrypt_secret(key.key, "n", bad)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        (None, MalformedSecretStorage),
        ({"algorithm": "m.scrypt", "salt": "s", "iterations": 10}, UnsupportedAlgorithm),
        (
            {"algorithm": "m.pbkdf2", "salt": "s", "iterations": 10, "bits": 128},
            UnsupportedAlgorithm,
        ),
        ({"algorithm": "m.pbkdf2", "salt": 5, "iterations": 10}, MalformedSecretStorage),
        ({"algorithm": "m.pbkdf2", "salt": "s", "iterations": "10"}, MalformedSecretStorage),
        ({"algorithm": "m.pbkdf2", "salt": "s", "iterations": True}, MalformedSecretStorage),
        ({"algorithm": "m.pbkdf2", "salt": "s", "iterations": 0}, MalformedSecretStorage),
        ({"algorithm": "m.pbkdf2", "salt": "s", "iterations": 10**12}, MalformedSecretStorage),
    ],
)
def test_bad_passphrase_parameters(params: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        derive_key("passphrase", {"algorithm": AES_HMAC_SHA2, "passphrase": params})


def test_explicit_256_bits_is_accepted() -> None:
    params = {"algorithm": "m.pbkdf2", "salt": "s", "iterations": 2, "bits": 256}
    assert derive_key("p", {"passphrase": params}) == hashlib.pbkdf2_hmac(
        "sha512", b"p", b"s", 2, 32
    )


def test_default_key_helpers() -> None:
    assert default_key_content("abc") == {"key": "abc"}
    assert default_key_id({"key": "abc"}) == "abc"
    unset: list[Any] = [{}, {"key": ""}, {"key": 5}, None, []]
    for content in unset:
        assert default_key_id(content) is None


def test_key_bytes_never_appear_in_repr(key: SecretStorageKey) -> None:
    assert key.key.hex() not in repr(key) and repr(key.key) not in repr(key)


def test_keys_must_be_32_bytes() -> None:
    for call in (
        lambda: encrypt_secret(b"short", "n", "s"),
        lambda: decrypt_secret(b"short", "n", MASTER_SECRET),
        lambda: check_key(b"short", DESCRIPTION),
        lambda: describe_key(b"short"),
    ):
        with pytest.raises(ValueError):
            call()
