"""Secret storage ("4S"): ``m.secret_storage.v1.aes-hmac-sha2`` (spec client-server "Secrets").

A 32-byte secret storage key encrypts each secret into the user's account data, under the event
type that is the secret's name, as ``{"encrypted": {key_id: {"iv", "ciphertext", "mac"}}}``:

    aes_key ‖ mac_key = HKDF-SHA-256(ikm=key, salt=32 zero bytes, info=secret name)[0:64]
    iv = 16 random bytes with bit 63 cleared;  ciphertext = AES-256-CTR(aes_key, iv, secret)
    mac = HMAC-SHA-256(mac_key, ciphertext)

The key's description (account data ``m.secret_storage.key.<key_id>``) carries the same
construction over 32 zero bytes under the empty name (``iv`` and ``mac``), so a typed key or
passphrase can be checked before use, and optionally how to derive the key from a passphrase
(``m.pbkdf2``: PBKDF2-HMAC-SHA-512). Base64 is written unpadded and read padded or not, as the
spec requires. Pure functions, no I/O; nothing here logs, and no message quotes a secret.
"""

from __future__ import annotations

import hmac
import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from e2eproxy.crypto.recovery_key import RecoveryKeyError, decode_recovery_key, encode_recovery_key
from e2eproxy.errors import E2EProxyError
from e2eproxy.protocol.canonical import b64decode, b64encode

AES_HMAC_SHA2 = "m.secret_storage.v1.aes-hmac-sha2"
PBKDF2 = "m.pbkdf2"
KEY_TYPE_PREFIX = "m.secret_storage.key."
DEFAULT_KEY_TYPE = "m.secret_storage.default_key"
CROSS_SIGNING_MASTER = "m.cross_signing.master"
CROSS_SIGNING_SELF_SIGNING = "m.cross_signing.self_signing"
CROSS_SIGNING_USER_SIGNING = "m.cross_signing.user_signing"

KEY_SIZE, IV_SIZE, MAC_SIZE = 32, 16, 32
DEFAULT_PBKDF2_ITERATIONS = 500_000  # matrix-rust-sdk's choice for new keys
# The description comes from the homeserver: a hostile count must not pin a core for hours.
MAX_PBKDF2_ITERATIONS = 50_000_000
ID_LENGTH = 32  # key ids and passphrase salts: random alphanumerics, as rust-sdk makes them
_ZERO_SALT = bytes(32)
_ALPHANUMERIC = string.ascii_letters + string.digits


class SecretStorageError(E2EProxyError):
    """Secret storage cannot be used with this key or data; nothing was decrypted."""


class MalformedSecretStorage(SecretStorageError):
    """A key description or an encrypted secret does not have its algorithm's shape."""


class UnsupportedAlgorithm(SecretStorageError):
    """The key or its passphrase uses an algorithm (or size) other than the ones we implement."""


class WrongKey(SecretStorageError):
    """A MAC did not match: the key or passphrase is wrong (or the data was tampered with)."""


class NotEncryptedForKey(SecretStorageError):
    """The secret's account data holds no copy encrypted with this key id."""


@dataclass(frozen=True, slots=True)
class SecretStorageKey:
    """An opened secret storage key: its id, its 32 bytes and its description content."""

    key_id: str
    key: bytes = field(repr=False)
    description: dict[str, Any]

    @property
    def account_data_type(self) -> str:
        """Where the description lives: ``m.secret_storage.key.<key_id>``."""
        return key_account_data_type(self.key_id)

    def recovery_key(self) -> str:
        """The key in the Matrix key representation, to show to the user once."""
        return encode_recovery_key(self.key)


def key_account_data_type(key_id: str) -> str:
    """The account data event type of the description of ``key_id``."""
    return KEY_TYPE_PREFIX + key_id


def default_key_content(key_id: str) -> dict[str, str]:
    """The ``m.secret_storage.default_key`` content that marks ``key_id`` as the default."""
    return {"key": key_id}


def default_key_id(content: Any) -> str | None:
    """The default key id from ``m.secret_storage.default_key`` content, or None if unset."""
    key_id = content.get("key") if isinstance(content, Mapping) else None
    return key_id if isinstance(key_id, str) and key_id else None


def _random_id() -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(ID_LENGTH))


def _expand(key: bytes, info: str) -> tuple[bytes, bytes]:
    """The AES key and MAC key for one secret name (the empty name for the key check)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=_ZERO_SALT, info=info.encode())
    okm = hkdf.derive(key)
    return okm[:32], okm[32:]


def _ctr(aes_key: bytes, iv: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
    return cipher.update(data) + cipher.finalize()


def _hmac(mac_key: bytes) -> crypto_hmac.HMAC:
    return crypto_hmac.HMAC(mac_key, hashes.SHA256())


def _new_iv() -> bytes:
    iv = bytearray(os.urandom(IV_SIZE))
    iv[8] &= 0x7F  # bit 63 cleared: some AES-CTR implementations carry into the upper half
    return bytes(iv)


def _check_size(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a secret storage key must be {KEY_SIZE} bytes")


def _decode(value: Any, what: str, size: int | None = None) -> bytes:
    """Padded or unpadded base64 of ``size`` bytes (any size when None)."""
    try:
        data = b64decode(value)
    except ValueError:
        raise MalformedSecretStorage(f"{what} is not base64") from None
    if size is not None and len(data) != size:
        raise MalformedSecretStorage(f"{what} is {len(data)} bytes, expected {size}")
    return data


def encrypt_secret(key: bytes, secret_name: str, secret: str) -> dict[str, str]:
    """The ``{"iv", "ciphertext", "mac"}`` object for ``secret`` stored under ``secret_name``."""
    _check_size(key)
    aes_key, mac_key = _expand(key, secret_name)
    iv = _new_iv()
    ciphertext = _ctr(aes_key, iv, secret.encode())
    mac = _hmac(mac_key)
    mac.update(ciphertext)
    tag = mac.finalize()
    return {"iv": b64encode(iv), "ciphertext": b64encode(ciphertext), "mac": b64encode(tag)}


def decrypt_secret(key: bytes, secret_name: str, encrypted: Any) -> str:
    """The secret in one ``{"iv", "ciphertext", "mac"}`` object; the MAC is checked first.

    Raises ``MalformedSecretStorage`` for a bad shape and ``WrongKey`` when the MAC does not
    match (the name is bound in by the HKDF, so a secret stored under another name fails too).
    """
    _check_size(key)
    if not isinstance(encrypted, Mapping):
        raise MalformedSecretStorage("the encrypted secret is not an object")
    iv = _decode(encrypted.get("iv"), "iv", IV_SIZE)
    ciphertext = _decode(encrypted.get("ciphertext"), "ciphertext")
    expected = _decode(encrypted.get("mac"), "mac", MAC_SIZE)
    aes_key, mac_key = _expand(key, secret_name)
    mac = _hmac(mac_key)
    mac.update(ciphertext)
    try:
        mac.verify(expected)  # constant-time comparison
    except InvalidSignature:
        raise WrongKey(f"the MAC of secret {secret_name!r} does not match this key") from None
    try:
        return _ctr(aes_key, iv, ciphertext).decode()
    except UnicodeDecodeError:
        raise MalformedSecretStorage(f"secret {secret_name!r} is not UTF-8 text") from None


def secret_account_data(key: SecretStorageKey, secret_name: str, secret: str) -> dict[str, Any]:
    """The account data content for ``secret_name``, encrypted with ``key`` only."""
    return {"encrypted": {key.key_id: encrypt_secret(key.key, secret_name, secret)}}


def read_secret(key: SecretStorageKey, secret_name: str, content: Any) -> str:
    """The secret from the account data content of ``secret_name``, using ``key``'s copy."""
    encrypted = content.get("encrypted") if isinstance(content, Mapping) else None
    if not isinstance(encrypted, Mapping):
        raise MalformedSecretStorage(f"account data {secret_name!r} has no 'encrypted' object")
    if key.key_id not in encrypted:
        raise NotEncryptedForKey(f"secret {secret_name!r} is not encrypted with {key.key_id!r}")
    return decrypt_secret(key.key, secret_name, encrypted[key.key_id])


def _zero_check(key: bytes, iv: bytes) -> bytes:
    """The MAC of 32 zero bytes encrypted under the empty name: the key check value."""
    aes_key, mac_key = _expand(key, "")
    mac = _hmac(mac_key)
    mac.update(_ctr(aes_key, iv, bytes(32)))
    return mac.finalize()


def describe_key(
    key: bytes, *, name: str | None = None, passphrase: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``m.secret_storage.key.<id>`` content for ``key``, with a fresh ``iv``/``mac`` check."""
    _check_size(key)
    iv = _new_iv()
    description: dict[str, Any] = {
        "algorithm": AES_HMAC_SHA2,
        "iv": b64encode(iv),
        "mac": b64encode(_zero_check(key, iv)),
    }
    if name is not None:
        description["name"] = name
    if passphrase is not None:
        description["passphrase"] = dict(passphrase)
    return description


def check_key(key: bytes, description: Any) -> None:
    """Raise unless ``key`` is the key that ``description`` describes.

    The ``iv`` and ``mac`` are optional: without both, the spec says to assume the key is right
    (a wrong one then fails on each secret's own MAC instead).
    """
    _check_size(key)
    if not isinstance(description, Mapping):
        raise MalformedSecretStorage("the key description is not an object")
    algorithm = description.get("algorithm")
    if algorithm != AES_HMAC_SHA2:
        raise UnsupportedAlgorithm(f"secret storage key algorithm {algorithm!r} is not supported")
    if description.get("iv") is None or description.get("mac") is None:
        return
    iv = _decode(description["iv"], "the key description's iv", IV_SIZE)
    expected = _decode(description["mac"], "the key description's mac", MAC_SIZE)
    if not hmac.compare_digest(_zero_check(key, iv), expected):  # constant-time
        raise WrongKey("the key does not match the secret storage key description")


def _pbkdf2(passphrase: str, salt: str, iterations: int) -> bytes:
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA512(), length=KEY_SIZE, salt=salt.encode(), iterations=iterations
    )
    return kdf.derive(passphrase.encode())


def _utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (JSON can carry a lone surrogate, which has none)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def derive_key(passphrase: str, description: Any) -> bytes:
    """The key from ``passphrase`` by the description's ``m.pbkdf2`` parameters (not checked).

    PBKDF2-HMAC-SHA-512 over the UTF-8 passphrase and salt, with the stored iteration count:
    about half a second at the default count, so callers keep it off an event loop.
    """
    info = description.get("passphrase") if isinstance(description, Mapping) else None
    if not isinstance(info, Mapping):
        raise MalformedSecretStorage("the key description has no passphrase parameters")
    if info.get("algorithm") != PBKDF2:
        raise UnsupportedAlgorithm(f"passphrase algorithm {info.get('algorithm')!r} is unsupported")
    salt, iterations, bits = info.get("salt"), info.get("iterations"), info.get("bits", 256)
    if not isinstance(salt, str) or not _utf8(salt):
        raise MalformedSecretStorage("the passphrase salt is not a string of text")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise MalformedSecretStorage("the passphrase iteration count is not an integer")
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise MalformedSecretStorage(f"the passphrase iteration count {iterations} is out of range")
    if bits != KEY_SIZE * 8:
        raise UnsupportedAlgorithm(f"a passphrase key of {bits!r} bits is not supported")
    return _pbkdf2(passphrase, salt, iterations)


def new_key(
    *,
    passphrase: str | None = None,
    name: str | None = None,
    iterations: int = DEFAULT_PBKDF2_ITERATIONS,
) -> SecretStorageKey:
    """A new key with a random id: random bytes, or derived from ``passphrase`` with a new salt.

    Upload ``description`` as ``account_data_type``, then mark it as the default key.
    """
    params: dict[str, Any] | None = None
    if passphrase is None:
        key = os.urandom(KEY_SIZE)
    else:
        salt = _random_id()
        params = {"algorithm": PBKDF2, "salt": salt, "iterations": iterations, "bits": 256}
        key = _pbkdf2(passphrase, salt, iterations)
    return SecretStorageKey(_random_id(), key, describe_key(key, name=name, passphrase=params))


def _opened(key_id: str, key: bytes, description: Mapping[str, Any]) -> SecretStorageKey:
    check_key(key, description)
    return SecretStorageKey(key_id, key, dict(description))


def open_key(user_input: str, key_id: str, description: Any) -> SecretStorageKey:
    """The key described by ``description`` from what the user typed: recovery key or passphrase.

    The text is tried as a recovery key first (cheap; a passphrase practically never has the
    key format's prefix and parity), then, if the description has passphrase parameters, as a
    passphrase (that also covers a passphrase that is an old recovery key). Raises ``WrongKey``
    when neither matches, or the ``RecoveryKeyError`` when the text is no key and no passphrase
    is set.
    """
    if not isinstance(description, Mapping):
        raise MalformedSecretStorage("the key description is not an object")
    try:
        return _opened(key_id, decode_recovery_key(user_input), description)
    except (RecoveryKeyError, WrongKey):
        if description.get("passphrase") is None:
            raise
    return _opened(key_id, derive_key(user_input, description), description)
