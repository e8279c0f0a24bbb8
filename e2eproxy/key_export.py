"""The standard Megolm room key export file (what Element and every Matrix client read and write).

Layout (spec "Key exports"; matrix-rust-sdk ``file_encryption/key_export.rs``)::

    -----BEGIN MEGOLM SESSION DATA-----
    base64(0x01 ‖ salt(16) ‖ iv(16) ‖ rounds(u32 BE) ‖ AES-256-CTR(json) ‖ HMAC-SHA256(all))
    -----END MEGOLM SESSION DATA-----

Keys: PBKDF2-HMAC-SHA512(passphrase, salt, rounds) -> 64 bytes; [0:32] AES key, [32:64] HMAC key.
The plaintext is a JSON array of ``ExportedSessionData`` objects. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from e2eproxy.errors import E2EProxyError
from e2eproxy.protocol.canonical import parse_json

log = logging.getLogger(__name__)

HEADER = "-----BEGIN MEGOLM SESSION DATA-----"
FOOTER = "-----END MEGOLM SESSION DATA-----"
VERSION = 1
DEFAULT_ROUNDS = 500_000  # matrix-rust-sdk's choice
MIN_EXPORT_ROUNDS = 100_000  # the spec's floor for files we write
MAX_IMPORT_ROUNDS = 50_000_000  # a hostile file must not pin a core for hours
SALT_SIZE, IV_SIZE, MAC_SIZE = 16, 16, 32
_HEAD_SIZE = 1 + SALT_SIZE + IV_SIZE + 4
REQUIRED_FIELDS = ("algorithm", "room_id", "sender_key", "session_id", "session_key")
LINE_WIDTH = 76


class KeyExportError(E2EProxyError):
    """A key export file cannot be read; nothing from it was used."""


class NotArmored(KeyExportError):
    """The text lacks the ``BEGIN/END MEGOLM SESSION DATA`` lines or is not base64."""


class TruncatedExport(KeyExportError):
    """The payload is shorter than its fixed header and MAC."""


class UnsupportedVersion(KeyExportError):
    """The payload's version byte is not 1."""


class BadMac(KeyExportError):
    """The MAC does not match: a wrong passphrase, or a damaged file."""


class InvalidExport(KeyExportError):
    """The decrypted payload is not a JSON list (an entry that is no session is skipped)."""


def _derive(passphrase: str, salt: bytes, rounds: int) -> tuple[bytes, bytes]:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA512(), length=64, salt=salt, iterations=rounds)
    key = kdf.derive(passphrase.encode())
    return key[:32], key[32:]


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return cipher.update(data) + cipher.finalize()


def _mac(key: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def encrypt_key_export(
    sessions: list[dict[str, Any]], passphrase: str, rounds: int = DEFAULT_ROUNDS
) -> str:
    """The armored export file text for ``sessions`` (``ExportedSessionData`` dicts)."""
    if rounds < MIN_EXPORT_ROUNDS:
        raise ValueError(f"rounds must be at least {MIN_EXPORT_ROUNDS}")
    salt = os.urandom(SALT_SIZE)
    iv = bytearray(os.urandom(IV_SIZE))
    iv[8] &= 0x7F  # bit 63 cleared, so the 64-bit counter half never wraps (other clients do)
    aes_key, mac_key = _derive(passphrase, salt, rounds)
    plaintext = json.dumps(sessions, separators=(",", ":")).encode()
    payload = (
        bytes([VERSION])
        + salt
        + bytes(iv)
        + struct.pack(">I", rounds)
        + _ctr(aes_key, bytes(iv), plaintext)
    )
    payload += _mac(mac_key, payload)
    body = base64.b64encode(payload).decode()
    lines = [body[i : i + LINE_WIDTH] for i in range(0, len(body), LINE_WIDTH)]
    return "\n".join([HEADER, *lines, FOOTER]) + "\n"


def _unarmor(data: str) -> bytes:
    text = data.strip()
    if not (text.startswith(HEADER) and text.endswith(FOOTER)):
        raise NotArmored(
            "not a Megolm key export: the BEGIN/END MEGOLM SESSION DATA lines are missing"
        )
    body = "".join(text[len(HEADER) : -len(FOOTER)].split())
    try:
        # Some clients drop the padding.
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise NotArmored("the key export is not valid base64") from None


def decrypt_key_export(data: str, passphrase: str) -> list[dict[str, Any]]:
    """The sessions in an armored export file; each failure is its own ``KeyExportError``."""
    payload = _unarmor(data)
    if len(payload) < _HEAD_SIZE + MAC_SIZE:
        raise TruncatedExport("the key export is truncated")
    if payload[0] != VERSION:
        raise UnsupportedVersion(f"unsupported key export version {payload[0]}")
    salt = payload[1 : 1 + SALT_SIZE]
    iv = payload[1 + SALT_SIZE : 1 + SALT_SIZE + IV_SIZE]
    (rounds,) = struct.unpack(">I", payload[_HEAD_SIZE - 4 : _HEAD_SIZE])
    if not 0 < rounds <= MAX_IMPORT_ROUNDS:
        raise InvalidExport(f"the key export asks for {rounds} PBKDF2 rounds; refusing")
    aes_key, mac_key = _derive(passphrase, salt, rounds)
    body, mac = payload[:-MAC_SIZE], payload[-MAC_SIZE:]
    if not hmac.compare_digest(_mac(mac_key, body), mac):
        raise BadMac("wrong passphrase, or the key export file is damaged (bad MAC)")
    plaintext = _ctr(aes_key, iv, body[_HEAD_SIZE:])
    return _parse_sessions(plaintext)


def _parse_sessions(plaintext: bytes) -> list[dict[str, Any]]:
    try:
        sessions = parse_json(plaintext.decode())
    except (UnicodeDecodeError, ValueError):
        raise InvalidExport("the decrypted key export is not valid JSON") from None
    if not isinstance(sessions, list):
        raise InvalidExport("the decrypted key export is not a JSON list")
    usable = []
    for number, session in enumerate(sessions):
        problem = _entry_problem(session)
        if problem is None:
            usable.append(session)
        else:  # as matrix-rust-sdk: one bad entry costs that entry, not the file
            log.warning("Entry %d of the key export skipped: %s", number, problem)
    return usable


def _entry_problem(session: Any) -> str | None:
    if not isinstance(session, dict):
        return "not an object"
    for name in REQUIRED_FIELDS:
        if not isinstance(session.get(name), str):
            return f"no {name!r} string"
    if not isinstance(session.get("sender_claimed_keys", {}), dict):
        return "sender_claimed_keys is not an object"
    return None
