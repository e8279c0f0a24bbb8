"""Cross-signing (spec client-server "Cross-signing"): our three Ed25519 keys, the bodies that
publish and use them, and the checks on the identities a ``/keys/query`` answer carries.

Each user has a master key (MSK, the identity), a self-signing key (SSK, signs the user's own
devices) and a user-signing key (USK, signs other users' master keys); the MSK signs the SSK and
USK. vodozemac binds no Ed25519 private key, so ours are ``cryptography`` keys made from 32-byte
seeds: the seed is what the store keeps (encrypted) and what secret storage holds, as unpadded
base64, under ``m.cross_signing.master`` / ``.self_signing`` / ``.user_signing``.

Signatures are Ed25519 over canonical JSON without ``signatures``/``unsigned``
(``protocol.canonical``); a key object's key id is ``ed25519:<unpadded base64 public key>``.
Pure, no I/O, no logging: no message or repr ever shows a seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from e2eproxy.crypto.secret_storage import (
    CROSS_SIGNING_MASTER,
    CROSS_SIGNING_SELF_SIGNING,
    CROSS_SIGNING_USER_SIGNING,
)
from e2eproxy.errors import E2EProxyError
from e2eproxy.protocol.canonical import b64decode, b64encode, sign_json, verify_json

MASTER, SELF_SIGNING, USER_SIGNING = "master", "self_signing", "user_signing"
SEED_SIZE = 32
SECRET_NAMES = {
    MASTER: CROSS_SIGNING_MASTER,
    SELF_SIGNING: CROSS_SIGNING_SELF_SIGNING,
    USER_SIGNING: CROSS_SIGNING_USER_SIGNING,
}
# Where each usage's public key sits in a /keys/query answer.
QUERY_FIELDS = {
    MASTER: "master_keys",
    SELF_SIGNING: "self_signing_keys",
    USER_SIGNING: "user_signing_keys",
}

DeviceSigner = Callable[[bytes], str]  # message bytes -> unpadded base64 Ed25519 signature


class CrossSigningError(E2EProxyError):
    """A cross-signing key or identity cannot be used."""


class InvalidCrossSigningKey(CrossSigningError):
    """A cross-signing key object has the wrong shape, owner or usage."""


class InvalidIdentitySignature(CrossSigningError):
    """A cross-signing key lacks a valid signature by the key that must sign it."""


def key_id(public_key: str) -> str:
    return f"ed25519:{public_key}"


class CrossSigningKey:
    """One private cross-signing key: an Ed25519 key from a 32-byte seed, with its usage."""

    __slots__ = ("_private", "_seed", "public_key", "usage")

    def __init__(self, usage: str, seed: bytes) -> None:
        if usage not in SECRET_NAMES:
            raise ValueError(f"unknown cross-signing key usage {usage!r}")
        if len(seed) != SEED_SIZE:
            raise ValueError(f"a cross-signing seed must be {SEED_SIZE} bytes")
        self.usage = usage
        self._seed = bytes(seed)
        self._private = Ed25519PrivateKey.from_private_bytes(self._seed)
        raw = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = b64encode(raw)

    @classmethod
    def generate(cls, usage: str) -> CrossSigningKey:
        return cls(usage, os.urandom(SEED_SIZE))

    @classmethod
    def from_secret(cls, usage: str, secret: str) -> CrossSigningKey:
        """From its secret-storage value (padded or unpadded base64 of the seed)."""
        try:
            seed = b64decode(secret)
        except ValueError:
            raise InvalidCrossSigningKey(f"the {usage} secret is not base64") from None
        if len(seed) != SEED_SIZE:
            raise InvalidCrossSigningKey(f"the {usage} secret is not a {SEED_SIZE}-byte seed")
        return cls(usage, seed)

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def secret_name(self) -> str:
        return SECRET_NAMES[self.usage]

    def to_seed(self) -> bytes:
        """The 32 secret bytes: what the store keeps (encrypted at rest)."""
        return self._seed

    def to_secret(self) -> str:
        """The secret-storage / ``m.secret.send`` value: unpadded base64 of the seed."""
        return b64encode(self._seed)

    def sign(self, message: bytes) -> str:
        return b64encode(self._private.sign(message))

    def public_object(self, user_id: str) -> dict[str, Any]:
        """The unsigned key object, as uploaded and as /keys/query returns it."""
        return {"user_id": user_id, "usage": [self.usage],
                "keys": {self.key_id: self.public_key}}

    def sign_object(self, value: Mapping[str, Any], user_id: str) -> dict[str, Any]:
        """A copy of ``value`` with this key's signature added under ``user_id``."""
        return sign_json(dict(value), user_id, self.key_id, self.sign)

    def __repr__(self) -> str:
        return f"CrossSigningKey({self.usage!r}, public_key={self.public_key!r})"


@dataclass(frozen=True, slots=True)
class CrossSigningKeys:
    """The private cross-signing keys we hold; after a gossip or a partial restore some may be
    missing (a device may hold only the SSK and USK, as Element's do)."""

    master: CrossSigningKey | None = None
    self_signing: CrossSigningKey | None = None
    user_signing: CrossSigningKey | None = None

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(CrossSigningKey.generate(MASTER), CrossSigningKey.generate(SELF_SIGNING),
                   CrossSigningKey.generate(USER_SIGNING))

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str]) -> CrossSigningKeys:
        """From secret name -> value (``m.cross_signing.*``); absent names stay ``None``."""
        found = {usage: CrossSigningKey.from_secret(usage, secrets[name])
                 for usage, name in SECRET_NAMES.items() if name in secrets}
        return cls(found.get(MASTER), found.get(SELF_SIGNING), found.get(USER_SIGNING))

    def secrets(self) -> dict[str, str]:
        """Secret name -> value for each key held, to put in secret storage."""
        return {key.secret_name: key.to_secret() for key in self._held()}

    def _held(self) -> list[CrossSigningKey]:
        return [k for k in (self.master, self.self_signing, self.user_signing) if k is not None]

    def upload_body(
        self, user_id: str, device_id: str, device_sign: DeviceSigner
    ) -> dict[str, Any]:
        """The ``POST /keys/device_signing/upload`` body (without UIA ``auth``).

        The MSK is signed by our device (so our other devices can trust it from this one, as
        rust-sdk and js-sdk do), the SSK and USK by the MSK. Needs all three keys.
        """
        if self.master is None or self.self_signing is None or self.user_signing is None:
            raise CrossSigningError("uploading cross-signing keys needs all three private keys")
        master = sign_json(self.master.public_object(user_id), user_id,
                           f"ed25519:{device_id}", device_sign)
        return {
            "master_key": master,
            "self_signing_key": self.master.sign_object(
                self.self_signing.public_object(user_id), user_id),
            "user_signing_key": self.master.sign_object(
                self.user_signing.public_object(user_id), user_id),
        }

    def matches(self, identity: UserIdentity) -> bool:
        """True when every key we hold is the public key the server lists for its usage (a
        stale private key, after a reset elsewhere, must not sign anything)."""
        listed = {MASTER: identity.master.public_key,
                  SELF_SIGNING: identity.self_signing.public_key,
                  USER_SIGNING: identity.user_signing.public_key if identity.user_signing else None}
        return bool(self._held()) and all(
            listed[key.usage] == key.public_key for key in self._held())


def sign_device(
    ssk: CrossSigningKey, user_id: str, device_keys: Mapping[str, Any]
) -> dict[str, Any]:
    """Our own device's keys signed by our SSK, for ``/keys/signatures/upload``.

    Only the new signature is sent: the server keeps the device's own and checks ours against
    the device keys it stores.
    """
    if ssk.usage != SELF_SIGNING:
        raise ValueError("devices are signed with the self-signing key")
    if device_keys.get("user_id") != user_id:
        raise CrossSigningError("only our own devices are signed with our self-signing key")
    return ssk.sign_object(_unsigned(device_keys), user_id)


def sign_user(usk: CrossSigningKey, user_id: str, master_key: Mapping[str, Any]) -> dict[str, Any]:
    """Another user's master key object signed by our USK, for ``/keys/signatures/upload``."""
    if usk.usage != USER_SIGNING:
        raise ValueError("other users' master keys are signed with the user-signing key")
    if master_key.get("user_id") == user_id:
        raise CrossSigningError("our own master key is not signed with our user-signing key")
    return usk.sign_object(_unsigned(master_key), user_id)


def _unsigned(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}


def signatures_upload_body(signed: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``POST /keys/signatures/upload`` body for signed device keys and key objects.

    The spec files each object under its owner and then its device id (device keys) or its
    unpadded public key (cross-signing keys).
    """
    body: dict[str, dict[str, Any]] = {}
    for value in signed:
        owner = value.get("user_id")
        if not isinstance(owner, str):
            raise ValueError("a signed object has no user_id")
        # Device keys carry a device_id; a cross-signing key object never does.
        is_device = "device_id" in value
        name = value["device_id"] if is_device else _single_key(value, owner).public_key
        body.setdefault(owner, {})[name] = dict(value)
    return body


# -- public identities from /keys/query ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrossSigningPublicKey:
    """One cross-signing key object as the server lists it (``content`` keeps its signatures)."""

    user_id: str
    usage: tuple[str, ...]
    public_key: str
    content: Mapping[str, Any]

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def signed_by(self, signer: CrossSigningPublicKey) -> bool:
        return verify_json(dict(self.content), signer.user_id, signer.key_id, signer.public_key)


def _single_key(value: Mapping[str, Any], user_id: str) -> CrossSigningPublicKey:
    keys = value.get("keys")
    usage = value.get("usage")
    if value.get("user_id") != user_id:
        raise InvalidCrossSigningKey(f"a cross-signing key listed for {user_id} names another user")
    if not isinstance(usage, list) or not all(isinstance(u, str) for u in usage):
        raise InvalidCrossSigningKey("a cross-signing key's usage is not a list of strings")
    # The spec: exactly one key, named ed25519:<the key itself>.
    if not isinstance(keys, Mapping) or len(keys) != 1:
        raise InvalidCrossSigningKey("a cross-signing key object must hold exactly one key")
    ((name, public),) = keys.items()
    if not isinstance(public, str) or name != key_id(public):
        raise InvalidCrossSigningKey("a cross-signing key's id does not match its key")
    try:
        if len(b64decode(public)) != SEED_SIZE:
            raise ValueError
    except ValueError:
        raise InvalidCrossSigningKey("a cross-signing public key is not 32 bytes") from None
    return CrossSigningPublicKey(user_id, tuple(usage), public, dict(value))


def parse_key(value: Any, user_id: str, usage: str) -> CrossSigningPublicKey:
    """A key object checked for shape, owner and usage; raises ``InvalidCrossSigningKey``."""
    if not isinstance(value, Mapping):
        raise InvalidCrossSigningKey(f"the {usage} key of {user_id} is not an object")
    key = _single_key(value, user_id)
    if usage not in key.usage:
        raise InvalidCrossSigningKey(f"the {usage} key of {user_id} has usage {list(key.usage)}")
    return key


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """A user's checked public cross-signing keys: the SSK (and for us, the USK) is signed by
    the MSK. ``user_signing`` is only ever visible for our own user."""

    user_id: str
    master: CrossSigningPublicKey
    self_signing: CrossSigningPublicKey
    user_signing: CrossSigningPublicKey | None = None

    def signs_device(self, device_keys: Mapping[str, Any]) -> bool:
        """True when ``device_keys`` belong to this user and carry a valid SSK signature."""
        return device_keys.get("user_id") == self.user_id and verify_json(
            dict(device_keys), self.user_id, self.self_signing.key_id,
            self.self_signing.public_key)

    def has_signed_user(self, other: UserIdentity) -> bool:
        """True when this (our own) identity's USK signed ``other``'s master key."""
        usk = self.user_signing
        return usk is not None and verify_json(
            dict(other.master.content), self.user_id, usk.key_id, usk.public_key)

    def is_signed_by_device(self, device_id: str, device_ed25519: str) -> bool:
        """True when the master key carries a valid signature by one of the user's devices."""
        return verify_json(dict(self.master.content), self.user_id, f"ed25519:{device_id}",
                           device_ed25519)

    def collides_with_device(self, device_ids: Iterable[str]) -> bool:
        """The spec's warning case: a device id equal to a cross-signing public key, which a
        malicious server could use to pass one key off as the other during verification."""
        ours = {self.master.public_key, self.self_signing.public_key}
        if self.user_signing is not None:
            ours.add(self.user_signing.public_key)
        return any(device_id in ours for device_id in device_ids)


def identity_from_query(answer: Mapping[str, Any], user_id: str) -> UserIdentity | None:
    """``user_id``'s identity from a ``/keys/query`` answer: ``None`` when no master key is
    listed; raises ``CrossSigningError`` when a key is malformed or wrongly signed."""
    master_value = _listed(answer, MASTER, user_id)
    if master_value is None:
        return None
    master = parse_key(master_value, user_id, MASTER)
    ssk_value = _listed(answer, SELF_SIGNING, user_id)
    if ssk_value is None:
        raise InvalidCrossSigningKey(f"{user_id} has a master key but no self-signing key")
    ssk = parse_key(ssk_value, user_id, SELF_SIGNING)
    if not ssk.signed_by(master):
        raise InvalidIdentitySignature(f"the self-signing key of {user_id} lacks its signature")
    usk = None
    usk_value = _listed(answer, USER_SIGNING, user_id)
    if usk_value is not None:
        usk = parse_key(usk_value, user_id, USER_SIGNING)
        if not usk.signed_by(master):
            raise InvalidIdentitySignature(f"the user-signing key of {user_id} lacks its signature")
    return UserIdentity(user_id, master, ssk, usk)


def _listed(answer: Mapping[str, Any], usage: str, user_id: str) -> Any:
    section = answer.get(QUERY_FIELDS[usage])
    return section.get(user_id) if isinstance(section, Mapping) else None


@dataclass(frozen=True, slots=True)
class QueriedIdentities:
    """Every identity in one ``/keys/query`` answer: the valid ones and, as values, why the
    others were rejected (user id -> reason)."""

    identities: dict[str, UserIdentity]
    rejected: dict[str, str]


def identities_from_query(answer: Mapping[str, Any]) -> QueriedIdentities:
    masters = answer.get(QUERY_FIELDS[MASTER])
    identities: dict[str, UserIdentity] = {}
    rejected: dict[str, str] = {}
    for user_id in masters if isinstance(masters, Mapping) else ():
        try:
            identity = identity_from_query(answer, user_id)
        except CrossSigningError as exc:
            rejected[user_id] = str(exc)
            continue
        if identity is not None:
            identities[user_id] = identity
    return QueriedIdentities(identities, rejected)

