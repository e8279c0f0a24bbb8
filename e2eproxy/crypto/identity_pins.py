"""Identity pinning (trust on first use) for other users' cross-signing master keys.

The first master key seen for a user is pinned. A later, different one is reported as an
``IdentityChange`` value, never an exception, and stays unapproved until the user pins it; if
the user had verified the old identity, the change is a *verification violation* (the latch
``previously_verified`` stays set until re-verification or an explicit withdrawal). This is
rust-sdk's ``identity_needs_user_approval`` / ``has_verification_violation`` model, as plain
records the store can keep. Pure: each step returns a new record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from e2eproxy.crypto.cross_signing import UserIdentity


@dataclass(frozen=True, slots=True)
class PinnedIdentity:
    """What we remember of one user's identity."""

    user_id: str
    pinned_master: str  # the master key the user accepted (first seen, or pinned later)
    current_master: str  # the master key the server lists now
    verified: bool = False  # the current master key is verified by us
    previously_verified: bool = False  # latch: we verified some identity of this user once

    @property
    def needs_approval(self) -> bool:
        """The server lists another master key than the pinned one."""
        return self.current_master != self.pinned_master

    @property
    def verification_violation(self) -> bool:
        """We verified this user once and do not trust their current identity."""
        return self.previously_verified and not self.verified


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """A user's master key changed from the one we knew."""

    user_id: str
    old_master: str
    new_master: str
    was_verified: bool  # we had verified the old identity

    @property
    def verification_violation(self) -> bool:
        return self.was_verified


def observe_identity(
    record: PinnedIdentity | None, identity: UserIdentity, *, verified: bool = False
) -> tuple[PinnedIdentity, IdentityChange | None]:
    """Fold the identity a ``/keys/query`` answer listed into ``record``.

    ``verified`` says the listed master key is verified now (for example our USK signed it);
    verification is remembered per master key, so it is never lost while the key stays.
    """
    master = identity.master.public_key
    if record is None:
        return PinnedIdentity(identity.user_id, master, master, verified, verified), None
    if master == record.current_master:
        if verified and not record.verified:
            return replace(record, verified=True, previously_verified=True), None
        return record, None
    change = IdentityChange(identity.user_id, record.current_master, master, record.verified)
    updated = replace(record, current_master=master, verified=verified,
                      previously_verified=record.previously_verified or verified)
    return updated, change


def pin_current(record: PinnedIdentity) -> PinnedIdentity:
    """The user accepted the current master key (a pin violation is resolved)."""
    return replace(record, pinned_master=record.current_master)


def mark_verified(record: PinnedIdentity) -> PinnedIdentity:
    """The current master key was verified (by SAS, or our USK signed it): pinned and latched."""
    return replace(record, pinned_master=record.current_master, verified=True,
                   previously_verified=True)


def withdraw_verification(record: PinnedIdentity) -> PinnedIdentity:
    """Forget that the user was ever verified (clears a violation) and pin what is there now."""
    return replace(record, pinned_master=record.current_master, verified=False,
                   previously_verified=False)
