"""The store's key hierarchy: one random data key, wrapped by a key-encryption key (KEK).

Hierarchy::

    KEK  (OS keyring | scrypt(passphrase, salt) | 0600 key file in the data dir)
     └─ wraps (AES-256-GCM) ─> data key (32 random bytes, one per store)
          ├─ HKDF "pickle"  -> vodozemac pickle key
          ├─ HKDF "value"   -> AES-256-GCM key for every stored value (row identity as AAD)
          └─ HKDF "index"   -> HMAC-SHA256 key that turns ids (room, user, session) into lookup keys

The wrapped data key and the KEK parameters (never the KEK itself) live in the database, so a copy
of the database needs the keyring entry, the passphrase or the key file to be read.
Unwrapping only reads: a wrong passphrase is reported before anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from e2eproxy.errors import StoreCorrupt, StoreError, WrongPassphrase

log = logging.getLogger(__name__)

KEY_SIZE = 32
NONCE_SIZE = 12
# Row indexes remembered (ids of accounts, rooms, sessions); the memo is dropped when full.
INDEX_CACHE = 8_192
KEYRING_SERVICE = "e2eproxy"
KEY_FILE_NAME = "store.key"
# OWASP's scrypt floor: 128 MiB, about 0.3 s once per start.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
_WRAP_AAD = b"e2eproxy data key v1|"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class KekSource(Protocol):
    """Where the key-encryption key comes from. ``params`` are stored beside the wrapped key."""

    kind: str

    def create(self, store_id: str) -> tuple[bytes, dict[str, Any]]:
        """Make a new KEK for a new store; returns it and the parameters to store."""
        ...

    def recover(self, store_id: str, params: dict[str, Any]) -> bytes:
        """Rebuild the KEK of an existing store from its stored parameters."""
        ...


@dataclass
class PassphraseSource:
    """A passphrase stretched with scrypt and a stored random salt."""

    passphrase: str
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    kind: str = "passphrase"

    def create(self, store_id: str) -> tuple[bytes, dict[str, Any]]:
        salt = os.urandom(16)
        params = {"salt": _b64(salt), "n": self.n, "r": self.r, "p": self.p}
        return self.recover(store_id, params), params

    def recover(self, store_id: str, params: dict[str, Any]) -> bytes:
        try:
            salt, n, r, p = _unb64(params["salt"]), params["n"], params["r"], params["p"]
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreCorrupt("the store's passphrase parameters are damaged") from exc
        return Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p).derive(self.passphrase.encode())


class KeyringBackend(Protocol):
    """The part of a ``keyring`` backend we use (tests pass a dict-backed fake)."""

    def get_password(self, service: str, username: str) -> str | None: ...

    def set_password(self, service: str, username: str, password: str) -> None: ...


def usable_keyring() -> KeyringBackend | None:
    """The OS keyring if a real one exists; None for the fail/null/plaintext-file backends.

    Priority >= 1 leaves out ``fail`` (0), ``null`` (-1), an empty chainer, and keyrings.alt's
    plaintext files (0.5), which protect no better than our own key file.
    """
    try:
        import keyring

        backend = keyring.get_keyring()
        priority = float(backend.priority)
    except Exception as exc:  # a broken keyring install must not stop the proxy
        log.info("OS keyring unavailable (%s); not using it", type(exc).__name__)
        return None
    if priority < 1:
        return None
    result: KeyringBackend = backend
    return result


@dataclass
class KeyringSource:
    """A random KEK kept in the OS keyring under (``e2eproxy``, store id)."""

    backend: KeyringBackend
    kind: str = "keyring"

    def create(self, store_id: str) -> tuple[bytes, dict[str, Any]]:
        kek = os.urandom(KEY_SIZE)
        try:
            self.backend.set_password(KEYRING_SERVICE, store_id, _b64(kek))
        except Exception as exc:
            raise StoreError(f"cannot write the store key to the OS keyring: {exc}") from exc
        return kek, {"service": KEYRING_SERVICE, "username": store_id}

    def recover(self, store_id: str, params: dict[str, Any]) -> bytes:
        service = str(params.get("service", KEYRING_SERVICE))
        username = str(params.get("username", store_id))
        try:
            stored = self.backend.get_password(service, username)
        except Exception as exc:
            raise StoreError(f"cannot read the store key from the OS keyring: {exc}") from exc
        if stored is None:
            raise WrongPassphrase(
                f"the OS keyring holds no key for this store ({service}/{username})"
            )
        return _unb64(stored)


@dataclass
class KeyFileSource:
    """A random KEK in a 0600 file next to the database (the fallback)."""

    path: Path
    kind: str = "keyfile"

    def create(self, store_id: str) -> tuple[bytes, dict[str, Any]]:
        if self.path.exists():  # left by a store whose creation did not finish: reuse it
            return self.recover(store_id, {}), {"file": self.path.name}
        kek = os.urandom(KEY_SIZE)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(kek)
            file.flush()
            os.fsync(file.fileno())
        log.warning(
            "No OS keyring and no store passphrase: the store key is in %s (mode 0600). This "
            "protects a copied database without that file; it does NOT protect against anyone "
            "who can read the data directory. Set E2EPROXY_STORE_PASSPHRASE or "
            "store.passphrase_file for more.",
            self.path,
        )
        return kek, {"file": self.path.name}

    def recover(self, store_id: str, params: dict[str, Any]) -> bytes:
        try:
            kek = self.path.read_bytes()
        except FileNotFoundError:
            raise WrongPassphrase(f"the store key file {self.path} is missing") from None
        if len(kek) != KEY_SIZE:
            raise StoreCorrupt(f"the store key file {self.path} is damaged")
        return kek


def choose_source(
    data_dir: Path,
    passphrase: str | None,
    use_keyring: bool,
    keyring_backend: KeyringBackend | None = None,
) -> KekSource:
    """Pick the KEK source for a new store: passphrase, else keyring, else key file."""
    if passphrase:
        return PassphraseSource(passphrase)
    if use_keyring:
        backend = keyring_backend if keyring_backend is not None else usable_keyring()
        if backend is not None:
            return KeyringSource(backend)
    return KeyFileSource(data_dir / KEY_FILE_NAME)


def source_for_existing(
    kind: str,
    data_dir: Path,
    passphrase: str | None,
    keyring_backend: KeyringBackend | None = None,
) -> KekSource:
    """The KEK source an existing store was created with; errors say what is missing."""
    if kind == "passphrase":
        if not passphrase:
            raise WrongPassphrase(
                "this store is locked with a passphrase: set E2EPROXY_STORE_PASSPHRASE "
                "or store.passphrase_file"
            )
        return PassphraseSource(passphrase)
    if passphrase:
        log.warning("store passphrase given but this store is unlocked by its %s; ignoring", kind)
    if kind == "keyring":
        backend = keyring_backend if keyring_backend is not None else usable_keyring()
        if backend is None:
            raise StoreError("this store's key is in the OS keyring, which is not available")
        return KeyringSource(backend)
    if kind == "keyfile":
        return KeyFileSource(data_dir / KEY_FILE_NAME)
    raise StoreCorrupt(f"unknown store key source {kind!r}")


def new_wrapped_key(source: KekSource, store_id: str) -> tuple[bytes, dict[str, Any]]:
    """A fresh data key and its wrapped form (JSON-able, safe to store)."""
    data_key = os.urandom(KEY_SIZE)
    return data_key, wrap_key(source, store_id, data_key)


def wrap_key(source: KekSource, store_id: str, data_key: bytes) -> dict[str, Any]:
    """The wrapped form of `data_key` under a key from `source` (a new salt each time)."""
    kek, params = source.create(store_id)
    nonce = os.urandom(NONCE_SIZE)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, _WRAP_AAD + store_id.encode())
    return {
        "kind": source.kind,
        "params": params,
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }


def unwrap_key(source: KekSource, store_id: str, record: dict[str, Any]) -> bytes:
    """The data key from its wrapped form; a KEK that does not fit is ``WrongPassphrase``."""
    kek = source.recover(store_id, record.get("params", {}))
    try:
        nonce, wrapped = _unb64(record["nonce"]), _unb64(record["wrapped"])
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreCorrupt("the store's wrapped key is damaged") from exc
    try:
        return AESGCM(kek).decrypt(nonce, wrapped, _WRAP_AAD + store_id.encode())
    except InvalidTag:
        what = "passphrase" if source.kind == "passphrase" else f"key from the {source.kind}"
        raise WrongPassphrase(f"wrong store {what}: it does not unlock this store") from None


def _hkdf(data_key: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=b"e2eproxy store " + label).derive(
        data_key
    )


class StoreKeys:
    """The keys derived from one data key, and the value cipher built on them."""

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != KEY_SIZE:
            raise ValueError("the data key must be 32 bytes")
        self.data_key = data_key  # kept to wrap it again (a passphrase change)
        # HKDF with distinct labels: the pickle key, the value key and the index key never meet.
        self.pickle_key = _hkdf(data_key, b"vodozemac pickle v1")
        self._aead = AESGCM(_hkdf(data_key, b"value aes-gcm v1"))
        self._index_key = _hkdf(data_key, b"index hmac v1")
        # The same ids are looked up again and again (every lease renewal names every account).
        self._indexes: dict[tuple[str, ...], bytes] = {}

    def encrypt(self, aad: bytes, plaintext: bytes) -> bytes:
        """nonce ‖ AES-256-GCM(plaintext); ``aad`` is the row identity."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, aad: bytes, blob: bytes) -> bytes:
        """The plaintext of ``encrypt``; a tampered, moved or truncated value is StoreCorrupt."""
        if len(blob) < NONCE_SIZE + 16:
            raise StoreCorrupt("a stored value is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise StoreCorrupt("a stored value failed its integrity check") from None

    def index(self, *parts: str) -> bytes:
        """A keyed hash of ids: rows are found by it, and the ids stay unreadable on disk."""
        found = self._indexes.get(parts)
        if found is None:
            # Length-prefixed, so ("a", "bc") and ("ab", "c") never collide.
            message = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
            found = hmac.new(self._index_key, message, hashlib.sha256).digest()[:16]
            if len(self._indexes) >= INDEX_CACHE:
                self._indexes.clear()
            self._indexes[parts] = found
        return found
