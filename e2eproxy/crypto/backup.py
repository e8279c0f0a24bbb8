"""Server-side key backup, algorithm ``m.megolm_backup.v1.curve25519-aes-sha2``.

Each inbound Megolm session is uploaded as ``KeyBackupData``::

    {"first_message_index", "forwarded_count", "is_verified",
     "session_data": {"ephemeral", "ciphertext", "mac"}}

where ``session_data`` is vodozemac's PK encryption (ephemeral X25519 with the backup's public
key, HKDF-SHA-256, AES-256-CBC) of the JSON ``BackedUpSessionData``. Its MAC covers the empty
string, not the ciphertext (a libolm bug the spec kept): it proves the key, not the data, and
anyone who knows the public key (the server too) can write entries. So a restored session is
only ever as trusted as an imported one, and each is checked against the session id it is
filed under.

The decryption key is a Curve25519 secret kept as its 32 bytes (vodozemac's ``PkDecryption``
has no pickle); in secret storage and ``m.secret.send`` it is the secret ``m.megolm_backup.v1``
as unpadded base64. The backup version's ``auth_data`` (``public_key`` plus ``signatures``) is
signed by the device and later the master key over canonical JSON. Pure, no I/O, no logging.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import vodozemac

from e2eproxy.crypto.recovery_key import decode_recovery_key, encode_recovery_key
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.errors import E2EProxyError
from e2eproxy.protocol.canonical import (
    b64decode,
    b64encode,
    canonical_json,
    parse_json,
    sign_json,
    verify_json,
)

BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
BACKUP_SECRET_NAME = "m.megolm_backup.v1"
KEY_SIZE = 32
# Written as rust-sdk and key exports do; the spec (v1.19) names it "shared_history".
SHARED_HISTORY = "m.shared_history"
_SHARED_HISTORY_NAMES = (SHARED_HISTORY, "shared_history", "org.matrix.msc3061.shared_history")


class BackupError(E2EProxyError):
    """A key backup entry or backup version cannot be used; nothing from it was used."""


class MalformedBackupData(BackupError):
    """Backup data (auth_data, session_data or the decrypted session) is not the right shape."""


class UnsupportedBackupAlgorithm(BackupError):
    """The backup version's algorithm is not ``m.megolm_backup.v1.curve25519-aes-sha2``."""


class BackupDecryptionFailed(BackupError):
    """vodozemac refused the entry: the wrong decryption key, or damaged data."""


class SessionIdMismatch(BackupError):
    """The restored session key belongs to another session than the one it is filed under."""


def _decode(value: Any, what: str, size: int | None = None) -> bytes:
    try:
        data = b64decode(value)
    except ValueError:
        raise MalformedBackupData(f"{what} is not base64") from None
    if size is not None and len(data) != size:
        raise MalformedBackupData(f"{what} is {len(data)} bytes, expected {size}")
    return data


def _public_key_bytes(auth_data: Any) -> bytes:
    if not isinstance(auth_data, Mapping):
        raise MalformedBackupData("auth_data is not an object")
    return _decode(auth_data.get("public_key"), "auth_data.public_key", KEY_SIZE)


class BackupDecryptionKey:
    """The backup's private key: decrypts entries, and names the backup it belongs to."""

    __slots__ = ("_pk", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise ValueError(f"a backup decryption key must be {KEY_SIZE} bytes")
        self._secret = bytes(secret)
        self._pk = vodozemac.PkDecryption.from_key(vodozemac.Curve25519SecretKey.from_bytes(secret))

    @classmethod
    def generate(cls) -> BackupDecryptionKey:
        """A new random key (X25519 clamps any 32 random bytes)."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> BackupDecryptionKey:
        """From the ``m.megolm_backup.v1`` secret (padded or unpadded base64 of 32 bytes)."""
        return cls(_decode(text, "the backup key", KEY_SIZE))

    @classmethod
    def from_recovery_key(cls, text: str) -> BackupDecryptionKey:
        """From the key representation a user typed (raises ``RecoveryKeyError``)."""
        return cls(decode_recovery_key(text))

    def to_bytes(self) -> bytes:
        """The 32 secret bytes: what the store keeps (encrypted at rest)."""
        return self._secret

    def to_base64(self) -> str:
        """The ``m.megolm_backup.v1`` secret value: unpadded base64."""
        return b64encode(self._secret)

    def to_recovery_key(self) -> str:
        """The key representation, to show to the user."""
        return encode_recovery_key(self._secret)

    @property
    def public_key(self) -> str:
        """The backup's public key, unpadded base64 (``auth_data.public_key``)."""
        return self._pk.public_key.to_base64()

    def auth_data(self) -> dict[str, Any]:
        """Unsigned ``auth_data`` for a new backup version; sign it with ``sign_auth_data``."""
        return {"public_key": self.public_key}

    def matches(self, auth_data: Any) -> bool:
        """True when ``auth_data.public_key`` is this key's public key (padding aside)."""
        try:
            return _public_key_bytes(auth_data) == self._pk.public_key.to_bytes()
        except MalformedBackupData:
            return False

    def decrypt_session_data(self, session_data: Any) -> dict[str, Any]:
        """One ``session_data`` decrypted to a JSON object, unchecked (see ``restore_session``)."""
        if not isinstance(session_data, Mapping):
            raise MalformedBackupData("session_data is not an object")
        message = vodozemac.Message(
            _decode(session_data.get("ciphertext"), "session_data.ciphertext"),
            _decode(session_data.get("mac"), "session_data.mac"),
            _decode(session_data.get("ephemeral"), "session_data.ephemeral", KEY_SIZE),
        )
        try:
            plaintext = self._pk.decrypt(message)
        except ValueError:  # PkDecodeException: MAC mismatch or bad padding
            raise BackupDecryptionFailed("the entry does not decrypt with this key") from None
        try:
            value = parse_json(plaintext)
        except ValueError:
            raise MalformedBackupData("the decrypted backup entry is not JSON") from None
        if not isinstance(value, dict):
            raise MalformedBackupData("the decrypted backup entry is not a JSON object")
        return value

    def __repr__(self) -> str:
        return f"BackupDecryptionKey(public_key={self.public_key!r})"


class BackupEncryptionKey:
    """The backup's public key, from a trusted ``auth_data``: encrypts entries for upload."""

    __slots__ = ("_pk", "public_key")

    def __init__(self, public_key: str) -> None:
        raw = _decode(public_key, "the backup public key", KEY_SIZE)
        self._pk = vodozemac.PkEncryption.from_key(vodozemac.Curve25519PublicKey.from_bytes(raw))
        self.public_key = b64encode(raw)

    @classmethod
    def from_auth_data(cls, auth_data: Any) -> BackupEncryptionKey:
        """The key in ``auth_data`` (check its signatures or its private key first)."""
        return cls(b64encode(_public_key_bytes(auth_data)))

    def encrypt_session_data(self, backed_up: Mapping[str, Any]) -> dict[str, str]:
        """The ``session_data`` object for one ``BackedUpSessionData``."""
        try:
            message = self._pk.encrypt(canonical_json(dict(backed_up)))
        except ValueError:  # a low-order public key: no contributory shared secret
            raise MalformedBackupData("the backup public key is not usable") from None
        # Built from the attributes: Message.to_base64() returns (ephemeral, mac, ciphertext).
        return {
            "ephemeral": b64encode(message.ephemeral_key),
            "ciphertext": b64encode(message.ciphertext),
            "mac": b64encode(message.mac),
        }

    def __repr__(self) -> str:
        return f"BackupEncryptionKey(public_key={self.public_key!r})"


def _shared_history(entry: Mapping[str, Any]) -> bool:
    return any(entry.get(name) is True for name in _SHARED_HISTORY_NAMES)


def _imported_session(session_key: Any) -> vodozemac.InboundGroupSession:
    if not isinstance(session_key, str):
        raise MalformedBackupData("session_key is not a string")
    try:
        exported = vodozemac.ExportedSessionKey(session_key)
        return vodozemac.InboundGroupSession.import_session(exported)
    except ValueError:
        raise MalformedBackupData("session_key is not an exported Megolm session key") from None


def _checked_fields(entry: Any) -> dict[str, Any]:
    """The ``BackedUpSessionData`` fields of ``entry``, type-checked."""
    if not isinstance(entry, Mapping):
        raise MalformedBackupData("the session is not an object")
    if entry.get("algorithm") != MEGOLM_ALGORITHM:
        raise MalformedBackupData(f"session algorithm {entry.get('algorithm')!r} is not Megolm v1")
    claimed = entry.get("sender_claimed_keys", {})
    chain = entry.get("forwarding_curve25519_key_chain", [])
    if not isinstance(entry.get("sender_key"), str):
        raise MalformedBackupData("sender_key is not a string")
    if not isinstance(claimed, Mapping) or not all(isinstance(v, str) for v in claimed.values()):
        raise MalformedBackupData("sender_claimed_keys is not an object of strings")
    if not isinstance(chain, list) or not all(isinstance(k, str) for k in chain):
        raise MalformedBackupData("forwarding_curve25519_key_chain is not a list of strings")
    return {
        "algorithm": MEGOLM_ALGORITHM,
        "sender_key": entry["sender_key"],
        "session_key": entry.get("session_key"),
        "sender_claimed_keys": dict(claimed),
        "forwarding_curve25519_key_chain": list(chain),
        SHARED_HISTORY: _shared_history(entry),
    }


def backed_up_session(exported: Mapping[str, Any]) -> dict[str, Any]:
    """The ``BackedUpSessionData`` for an ``ExportedSessionData`` entry (room and id dropped).

    The session key should be exported at its first known index, as key exports do.
    """
    fields = _checked_fields(exported)
    _imported_session(fields["session_key"])
    return fields


def key_backup_data(
    key: BackupEncryptionKey,
    exported: Mapping[str, Any],
    *,
    forwarded_count: int = 0,
    is_verified: bool = False,
) -> dict[str, Any]:
    """The ``KeyBackupData`` to upload for one exported session.

    ``first_message_index`` is read from the session key itself. rust-sdk sends
    ``forwarded_count`` 1 for an imported or forwarded session and 0 otherwise, and always
    ``is_verified`` false; the server keeps the copy with verified, lower index, fewer forwards.
    """
    fields = _checked_fields(exported)
    session = _imported_session(fields["session_key"])
    session_id = exported.get("session_id")
    if session_id is not None and session_id != session.session_id:
        raise SessionIdMismatch("the exported session_id does not match its session key")
    return {
        "first_message_index": session.first_known_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": key.encrypt_session_data(fields),
    }


def restore_session(
    key: BackupDecryptionKey, room_id: str, session_id: str, backup_data: Any
) -> dict[str, Any]:
    """One ``KeyBackupData`` from the server, decrypted and checked, as ``ExportedSessionData``.

    The result has the shape of a key export entry (room_id and session_id from where the
    server filed it), ready for the importer; the session key must belong to ``session_id``.
    """
    if not isinstance(backup_data, Mapping):
        raise MalformedBackupData("the key backup data is not an object")
    fields = _checked_fields(key.decrypt_session_data(backup_data.get("session_data")))
    if _imported_session(fields["session_key"]).session_id != session_id:
        raise SessionIdMismatch(f"the backed-up key filed under {session_id!r} is for another")
    return {**fields, "room_id": room_id, "session_id": session_id}


def sign_auth_data(
    auth_data: Mapping[str, Any], user_id: str, key_id: str, sign: Callable[[bytes], str]
) -> dict[str, Any]:
    """``auth_data`` with one more signature (``key_id`` like ``ed25519:DEVICEID``).

    ``sign`` maps canonical JSON bytes to an unpadded base64 Ed25519 signature; signatures
    already present are kept, so the device and then the master key can both sign.
    """
    return sign_json(dict(auth_data), user_id, key_id, sign)


def verify_auth_data(auth_data: Any, user_id: str, key_id: str, ed25519_key: str) -> bool:
    """True when ``auth_data`` carries a valid signature by ``ed25519_key`` as user/key_id."""
    return verify_json(auth_data, user_id, key_id, ed25519_key)


def backup_version_body(auth_data: Mapping[str, Any]) -> dict[str, Any]:
    """The body of ``POST /room_keys/version`` (and ``PUT`` of a version's signatures)."""
    return {"algorithm": BACKUP_ALGORITHM, "auth_data": dict(auth_data)}


def backup_auth_data(version_info: Any) -> dict[str, Any]:
    """The ``auth_data`` of a ``GET /room_keys/version`` answer, if its algorithm is ours."""
    if not isinstance(version_info, Mapping):
        raise MalformedBackupData("the backup version is not an object")
    algorithm = version_info.get("algorithm")
    if algorithm != BACKUP_ALGORITHM:
        raise UnsupportedBackupAlgorithm(f"backup algorithm {algorithm!r} is not supported")
    auth_data = version_info.get("auth_data")
    if not isinstance(auth_data, Mapping):
        raise MalformedBackupData("the backup version has no auth_data object")
    _public_key_bytes(auth_data)  # raises unless it holds a 32-byte public key
    return dict(auth_data)
