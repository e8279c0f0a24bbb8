"""Encrypted attachments (spec: "Sending encrypted attachments"): AES-256-CTR with a fresh key and
IV per file, the IV's low 64 bits zero, SHA-256 of the ciphertext, described by `EncryptedFile`
JSON (`v: "v2"`, the key as a JWK). Streaming: both directions work chunk by chunk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

VERSION = "v2"
KEY_BYTES = 32


class AttachmentError(ValueError):
    """An EncryptedFile description or ciphertext that cannot be used; the message says why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _urlsafe_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode(text: Any, *, urlsafe: bool, what: str) -> bytes:
    if not isinstance(text, str):
        raise AttachmentError(f"{what} is missing or not a string")
    padded = text + "=" * (-len(text) % 4)
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (ValueError, TypeError) as exc:
        raise AttachmentError(f"{what} is not valid base64") from exc


@dataclass(frozen=True, slots=True)
class FileKey:
    """What decrypts one file: key, IV and the expected SHA-256 of the ciphertext."""

    key: bytes
    iv: bytes
    sha256: bytes

    def to_json(self, url: str) -> dict[str, Any]:
        """The `EncryptedFile` object for an event's `file` / `thumbnail_file`."""
        return {
            "url": url,
            "key": {
                "kty": "oct",
                "key_ops": ["encrypt", "decrypt"],
                "alg": "A256CTR",
                "k": _urlsafe_b64(self.key),
                "ext": True,
            },
            "iv": _b64(self.iv),
            "hashes": {"sha256": _b64(self.sha256)},
            "v": VERSION,
        }


def parse_encrypted_file(data: Any) -> tuple[str, FileKey]:
    """(mxc url, key) from an `EncryptedFile` object; AttachmentError says what is wrong."""
    if not isinstance(data, dict):
        raise AttachmentError("the encrypted file description is not an object")
    if data.get("v") != VERSION:
        raise AttachmentError(f"unsupported encrypted file version {data.get('v')!r}")
    url = data.get("url")
    if not isinstance(url, str) or not url.startswith("mxc://"):
        raise AttachmentError("the encrypted file has no mxc:// url")
    jwk = data.get("key")
    if not isinstance(jwk, dict) or jwk.get("kty") != "oct" or jwk.get("alg") != "A256CTR":
        raise AttachmentError("the file key is not an A256CTR octet key")
    key = _decode(jwk.get("k"), urlsafe=True, what="the file key")
    if len(key) != KEY_BYTES:
        raise AttachmentError("the file key is not 32 bytes long")
    iv = _decode(data.get("iv"), urlsafe=False, what="the file iv")
    if len(iv) != 16:
        raise AttachmentError("the file iv is not 16 bytes long")
    hashes = data.get("hashes")
    digest = _decode(
        hashes.get("sha256") if isinstance(hashes, dict) else None,
        urlsafe=False,
        what="the file's sha256 hash",
    )
    if len(digest) != 32:
        raise AttachmentError("the file's sha256 hash is not 32 bytes long")
    return url, FileKey(key, iv, digest)


def _ctr(key: bytes, iv: bytes) -> Cipher[modes.CTR]:
    return Cipher(algorithms.AES256(key), modes.CTR(iv))


class Encryptor:
    """Encrypt a file chunk by chunk; `finish()` gives its FileKey."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(KEY_BYTES)
        # The low 64 bits are the block counter: starting them at zero means no file can ever
        # wrap the counter into a previous block (the spec requires it).
        self._iv = secrets.token_bytes(8) + bytes(8)
        self._cipher: CipherContext = _ctr(self._key, self._iv).encryptor()
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> bytes:
        ciphertext = self._cipher.update(chunk)
        self._hash.update(ciphertext)
        return ciphertext

    def finish(self) -> FileKey:
        tail = self._cipher.finalize()
        self._hash.update(tail)  # CTR has no tail; kept for form
        return FileKey(self._key, self._iv, self._hash.digest())


class Decryptor:
    """Decrypt chunk by chunk. Callers must check `verify()` before trusting any plaintext:
    AES-CTR is malleable, so only the hash proves the ciphertext is the sender's."""

    def __init__(self, file_key: FileKey) -> None:
        self._cipher: CipherContext = _ctr(file_key.key, file_key.iv).decryptor()

    def update(self, chunk: bytes) -> bytes:
        return self._cipher.update(chunk)


class HashCheck:
    """SHA-256 over the ciphertext as it streams by."""

    def __init__(self, file_key: FileKey) -> None:
        self._expected = file_key.sha256
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def ok(self) -> bool:
        return hmac.compare_digest(self._hash.digest(), self._expected)


def decrypt_bytes(ciphertext: bytes, file_key: FileKey) -> bytes:
    """Whole-buffer decryption with the hash checked first (small files, tests)."""
    check = HashCheck(file_key)
    check.update(ciphertext)
    if not check.ok():
        raise AttachmentError("the file does not match its sha256 hash")
    return Decryptor(file_key).update(ciphertext)
