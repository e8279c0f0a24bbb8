"""Who we trust: our own cross-signing keys, every user's identity (pinned on first sight), and
the trust of each device that follows from them and from local decisions.

A device is *verified* when we verified it ourselves (local trust), or it is cross-signed by its
owner and we verified the owner (our USK signed their master key, or a SAS confirmed it); it is
*cross-signed* when its owner's self-signing key signed it; else *unverified* (or blacklisted /
ignored by local decision). An identity that changes after we verified it is a verification
violation: room keys are withheld from that user until the change is accepted.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass
from typing import Any

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import ChangeLog, CrossSigningRecord, DeviceRecord, IdentityRecord
from e2eproxy.crypto.cross_signing import (
    MASTER,
    SELF_SIGNING,
    USER_SIGNING,
    CrossSigningError,
    CrossSigningKey,
    CrossSigningKeys,
    UserIdentity,
    identity_from_query,
    sign_device,
    sign_user,
    signatures_upload_body,
)
from e2eproxy.crypto.identity_pins import (
    PinnedIdentity,
    mark_verified,
    observe_identity,
    pin_current,
)
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.types import UserId

logger = logging.getLogger(__name__)
KEY_FIELDS = ("master_keys", "self_signing_keys", "user_signing_keys")


class DeviceTrust(enum.Enum):
    VERIFIED = "verified"
    CROSS_SIGNED = "cross-signed"
    UNVERIFIED = "unverified"
    BLACKLISTED = "blacklisted"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What a cross-signing bootstrap uploads: the public keys (``/keys/device_signing/upload``,
    which may need the user's password) and then our device's SSK signature."""

    device_signing: dict[str, Any]
    signatures: dict[str, Any]


def _pinned(record: IdentityRecord, current_master: str) -> PinnedIdentity:
    return PinnedIdentity(record.user_id, record.pinned_master, current_master, record.verified,
                          record.previously_verified)


class TrustState:
    """Cross-signing keys, identities and device trust of one account (see the module doc)."""

    def __init__(self, account: AccountState, log: ChangeLog) -> None:
        self._account = account
        self._log = log
        self.own = CrossSigningKeys()
        self._own_record = CrossSigningRecord(None, None, None, uploaded=False)
        self._records: dict[str, IdentityRecord] = {}
        self._identities: dict[str, UserIdentity] = {}

    # -- restore -------------------------------------------------------------------------
    def load(self, own: list[CrossSigningRecord], identities: list[IdentityRecord]) -> None:
        for record in own[-1:]:
            self._own_record = record
            if record.uploaded:
                self.own = _keys_of(record)
        for identity in identities:
            self._records[identity.user_id] = identity
            parsed = _identity_of(identity)
            if parsed is not None:
                self._identities[identity.user_id] = parsed

    # -- identities ----------------------------------------------------------------------
    def identity(self, user_id: str) -> UserIdentity | None:
        return self._identities.get(user_id)

    def pinned(self, user_id: str) -> PinnedIdentity | None:
        record, identity = self._records.get(user_id), self._identities.get(user_id)
        if record is None or identity is None:
            return None
        return _pinned(record, identity.master.public_key)

    def receive_query(self, response: Any, users: list[str]) -> None:
        """Identities from a ``/keys/query`` answer, for the users its device lists applied."""
        if not isinstance(response, dict):
            return
        for user in users:
            try:
                identity = identity_from_query(response, user)
            except CrossSigningError as exc:
                logger.warning("ignoring the cross-signing keys of %s: %s", user, exc)
                continue
            if identity is not None:
                self._observe(identity)

    def _observe(self, identity: UserIdentity) -> None:
        user = identity.user_id
        record = self._records.get(user)
        previous = self._identities.get(user)
        pinned = _pinned(record, previous.master.public_key) if record and previous else None
        verified = self._vouched_for(identity)
        updated, change = observe_identity(pinned, identity, verified=verified)
        if change is not None:
            level = logging.WARNING if change.verification_violation else logging.INFO
            logger.log(level, "the cross-signing identity of %s changed%s", user,
                       " after we verified it: keys are withheld until it is accepted"
                       if change.verification_violation else "")
        self._identities[user] = identity
        self._save(user, identity, updated)
        if user == self._account.user_id:
            self._own_identity_listed(identity)

    def _own_identity_listed(self, identity: UserIdentity) -> None:
        pending = self._own_record
        if not pending.uploaded and pending.master is not None:
            keys = _keys_of(pending)
            if keys.matches(identity):  # uploaded before a crash lost the answer: ours
                self.bootstrap_uploaded()
                self._observe(identity)  # now vouched for: verified
                return
        held = self.own.master is not None or self.own.self_signing is not None
        if held and not self.own.matches(identity):
            logger.warning("our cross-signing keys no longer match the server's: reset "
                           "elsewhere; they are not used any more")
            self.own = CrossSigningKeys()

    def _vouched_for(self, identity: UserIdentity) -> bool:
        """Our own identity when we hold its master key; another user's when our trusted USK
        signed their master key."""
        if identity.user_id == self._account.user_id:
            master = self.own.master
            return master is not None and master.public_key == identity.master.public_key
        ours = self._identities.get(self._account.user_id)
        return ours is not None and self.own_trusted() and ours.has_signed_user(identity)

    def _save(self, user: str, identity: UserIdentity, pinned: PinnedIdentity) -> None:
        keys = {"master_key": dict(identity.master.content),
                "self_signing_key": dict(identity.self_signing.content)}
        if identity.user_signing is not None:
            keys["user_signing_key"] = dict(identity.user_signing.content)
        record = IdentityRecord(UserId(user), keys, pinned.pinned_master, pinned.verified,
                                pinned.previously_verified)
        self._records[user] = record
        self._log.identity(record)

    def own_trusted(self) -> bool:
        """Our own identity is one we hold the master key of, or verified (with a device of
        ours that held it)."""
        pinned = self.pinned(self._account.user_id)
        return pinned is not None and pinned.verified and not pinned.needs_approval

    def user_verified(self, user_id: str) -> bool:
        pinned = self.pinned(user_id)
        return pinned is not None and pinned.verified and not pinned.needs_approval

    def violation(self, user_id: str) -> bool:
        """We verified this user once, and their identity changed since (not yet accepted)."""
        pinned = self.pinned(user_id)
        return pinned is not None and pinned.verification_violation

    def accept_change(self, user_id: str) -> bool:
        """The user accepted the changed identity: pin it, and forget the old verification."""
        record, identity = self._records.get(user_id), self._identities.get(user_id)
        if record is None or identity is None:
            return False
        pinned = pin_current(_pinned(record, identity.master.public_key))
        pinned = dataclasses.replace(pinned, previously_verified=pinned.verified)
        self._save(user_id, identity, pinned)
        return True

    def mark_user_verified(self, user_id: str, master_key: str) -> bool:
        """A SAS confirmed ``master_key`` as ``user_id``'s: verified, if it is the one listed."""
        record, identity = self._records.get(user_id), self._identities.get(user_id)
        if record is None or identity is None or identity.master.public_key != master_key:
            return False
        self._save(user_id, identity, mark_verified(_pinned(record, master_key)))
        return True

    # -- devices -------------------------------------------------------------------------
    def cross_signed(self, device: DeviceRecord) -> bool:
        identity = self._identities.get(device.user_id)
        return identity is not None and identity.signs_device(device.keys)

    def device_trust(self, device: DeviceRecord) -> DeviceTrust:
        local = device.local_trust
        if local is LocalTrust.BLACKLISTED:
            return DeviceTrust.BLACKLISTED
        if local is LocalTrust.VERIFIED:
            return DeviceTrust.VERIFIED
        if self.cross_signed(device):
            owner_ok = (self.own_trusted() if device.user_id == self._account.user_id
                        else self.user_verified(device.user_id))
            return DeviceTrust.VERIFIED if owner_ok else DeviceTrust.CROSS_SIGNED
        if local is LocalTrust.IGNORED:
            return DeviceTrust.IGNORED
        return DeviceTrust.UNVERIFIED

    # -- our own keys --------------------------------------------------------------------
    def bootstrap(self) -> Bootstrap:
        """New cross-signing keys, saved (not yet active) before anything is uploaded."""
        keys = CrossSigningKeys.generate()
        self._own_record = _record_of(keys, uploaded=False)
        self._log.cross_signing(self._own_record)
        body = keys.upload_body(self._account.user_id, self._account.device_id,
                                self._account.sign)
        assert keys.self_signing is not None
        signed = sign_device(keys.self_signing, self._account.user_id,
                             self._account.device_keys())
        return Bootstrap(body, signatures_upload_body([signed]))

    def bootstrap_uploaded(self) -> None:
        """The server took the public keys: they are ours now."""
        record = dataclasses.replace(self._own_record, uploaded=True)
        self._own_record = record
        self.own = _keys_of(record)
        self._log.cross_signing(record)

    def import_secret(self, name: str, secret: str) -> bool:
        """A private key from another of our devices (``m.secret.send``) or from recovery:
        kept only if it is the public key our identity lists."""
        identity = self._identities.get(self._account.user_id)
        if identity is None:
            return False
        try:
            held = CrossSigningKeys.from_secrets({name: secret})
        except CrossSigningError:
            return False
        merged = CrossSigningKeys(held.master or self.own.master,
                                  held.self_signing or self.own.self_signing,
                                  held.user_signing or self.own.user_signing)
        if not merged.matches(identity) or merged == self.own:
            return False
        self.own = merged
        self._own_record = _record_of(merged, uploaded=True)
        self._log.cross_signing(self._own_record)
        return True

    def sign_own_device_request(self, device_keys: dict[str, Any]) -> dict[str, Any] | None:
        """A signatures upload body signing one of our devices with our SSK, if we hold it."""
        if self.own.self_signing is None:
            return None
        signed = sign_device(self.own.self_signing, self._account.user_id, device_keys)
        return signatures_upload_body([signed])

    def sign_user_request(self, user_id: str) -> dict[str, Any] | None:
        """A signatures upload body signing ``user_id``'s master key with our USK, if held."""
        identity = self._identities.get(user_id)
        if self.own.user_signing is None or identity is None:
            return None
        signed = sign_user(self.own.user_signing, self._account.user_id,
                           identity.master.content)
        return signatures_upload_body([signed])

    def status(self, own_device: DeviceRecord | None) -> dict[str, Any]:
        """``own_device``: this device as the server lists it (with the signatures it has)."""
        identity = self._identities.get(self._account.user_id)
        return {
            "has_identity": identity is not None,
            "master_key": identity.master.public_key if identity else None,
            "device_signed": own_device is not None and self.cross_signed(own_device),
            "private_keys": {"master": self.own.master is not None,
                             "self_signing": self.own.self_signing is not None,
                             "user_signing": self.own.user_signing is not None},
            "trusted": self.own_trusted(),
        }


def _keys_of(record: CrossSigningRecord) -> CrossSigningKeys:
    found: dict[str, CrossSigningKey | None] = {}
    for usage in (MASTER, SELF_SIGNING, USER_SIGNING):  # the record's fields have these names
        secret = getattr(record, usage)
        found[usage] = CrossSigningKey.from_secret(usage, secret) if secret else None
    return CrossSigningKeys(found[MASTER], found[SELF_SIGNING], found[USER_SIGNING])


def _record_of(keys: CrossSigningKeys, *, uploaded: bool) -> CrossSigningRecord:
    def secret(key: CrossSigningKey | None) -> str | None:
        return key.to_secret() if key is not None else None

    return CrossSigningRecord(secret(keys.master), secret(keys.self_signing),
                              secret(keys.user_signing), uploaded)


def _identity_of(record: IdentityRecord) -> UserIdentity | None:
    answer = {field: {record.user_id: record.keys[name]}
              for field, name in zip(KEY_FIELDS, ("master_key", "self_signing_key",
                                                   "user_signing_key"), strict=True)
              if name in record.keys}
    try:
        return identity_from_query(answer, record.user_id)
    except CrossSigningError:
        return None
