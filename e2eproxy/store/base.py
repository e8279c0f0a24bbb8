"""The ``Store`` protocol: what the I/O shell may rely on, whatever the backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from e2eproxy.crypto.changes import (
    Changes,
    EngineSnapshot,
    InboundGroupSessionRecord,
    ReplayRecord,
)
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

# A proxy is one long-lived process: a lease lost only when it dies or stalls for over 10 s.
# Renewing every 3 s survives two missed renewals (a long GC pause or a huge /sync decrypt).
# rust-sdk's 500 ms/50 ms suits apps that hand the store back and forth every few seconds;
# here handover happens only on a crash or a CLI key import, where 10 s of waiting is fine.
LEASE_MS = 10_000
RENEW_EVERY_MS = 3_000
TO_DEVICE_HASH_TTL_MS = 7 * 24 * 3600 * 1000
SNAPSHOT_TO_DEVICE_HASHES = 10_000
TXN_TTL_MS = 24 * 3600 * 1000


class AccountKey(NamedTuple):
    """One proxied device: the store's unit of ownership."""

    user_id: UserId
    device_id: DeviceId


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease. ``reload``: another holder had the account since this one last held it."""

    holder: str
    generation: int
    expires_ms: int
    reload: bool
    # Another instance is waiting for this account: hand it over (stop, then release).
    wanted: bool = False


class Store(Protocol):
    """Durable, encrypted memory of the crypto engines.

    Contract (every backend; checked by ``tests/store/test_contract.py``):

    * **Accounts.** Several accounts share one store, keyed by ``AccountKey(user_id, device_id)``.
      An account exists once something was saved for it; ``delete_account`` removes every row of it.
    * **Batches are all or nothing.** ``save(account, changes, ...)`` commits the whole batch, the
      sync tokens and txn entries given with it in one transaction, durably (fsync) before it
      returns; if it raises, nothing of the batch is stored. Persist before acknowledging: await
      ``save`` before answering the client or sending any request the batch created.
    * **Upserts** by the keys documented on each record in ``e2eproxy.crypto.changes``; a saved
      record is encoded at once, so the engine may go on mutating its live objects after ``save``
      returns.
    * **Inbound group sessions, better-session rule.** A stored session is kept when its
      ``first_known_index`` is lower, or equal unless the stored copy is imported and the new one is
      not (a direct key upgrades an imported one). They are never part of ``load_snapshot``: load
      them on demand with ``load_inbound_group_sessions`` (an account may hold 100,000).
    * **Loaded records are fresh objects**, never the live ones of a save.
    * **Pruning.** To-device hashes older than ``TO_DEVICE_HASH_TTL_MS`` and txn entries older than
      ``TXN_TTL_MS`` may be dropped; the snapshot holds at most ``SNAPSHOT_TO_DEVICE_HASHES``
      hashes.
    * **Secrets** (access tokens, later cross-signing and backup keys) are stored encrypted and
      bound to their account and name. A value that fails its integrity check raises
      ``StoreCorrupt``.
    * **Leases.** ``acquire_lease`` gives this store instance the right to drive an account; another
      live holder makes it wait up to ``wait_ms`` then raise ``StoreLocked``. While this instance
      holds a lease, ``save`` for that account is fenced: if another holder took the lease
      meanwhile, the save raises ``StoreLocked`` and writes nothing. ``Lease.reload`` tells a holder
      that someone else held the account since it last did: its engine must be rebuilt from the
      store.
    * **Errors.** ``WrongPassphrase`` (at ``open``, before anything is written), ``MigrationError``
      (a newer schema; the file is left as it is), ``StoreCorrupt``, ``StoreLocked``.
    """

    async def open(self) -> None:
        """Unlock (``WrongPassphrase``), migrate (``MigrationError``) and get ready."""
        ...

    async def close(self) -> None:
        """Release held leases and close; idempotent."""
        ...

    async def list_accounts(self) -> list[AccountKey]: ...

    async def has_account(self, account: AccountKey) -> bool:
        """Whether the store holds ``account`` (one lookup: ``list_accounts`` reads them all)."""
        ...

    async def delete_account(self, account: AccountKey) -> None:
        """Forget everything of ``account`` (on logout)."""
        ...

    async def save(
        self,
        account: AccountKey,
        changes: Changes,
        *,
        sync_tokens: Mapping[str, str] | None = None,
        txns: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        """Commit one batch, plus sync tokens and txn entries, in one transaction."""
        ...

    async def load_snapshot(self, account: AccountKey) -> EngineSnapshot | None:
        """Everything to rebuild the engine except inbound group sessions; None if no account."""
        ...

    async def load_inbound_group_sessions(
        self, account: AccountKey, ids: Sequence[tuple[RoomId, SessionId]]
    ) -> tuple[list[InboundGroupSessionRecord], list[ReplayRecord]]:
        """The stored sessions among ``ids`` (missing ones are left out) and their replay rows."""
        ...

    async def count_inbound_group_sessions(self, account: AccountKey) -> int: ...

    def room_keys_saved(self, user_id: str) -> int:
        """How many batches with inbound group sessions this store instance has committed for
        any device of ``user_id`` (a count that only grows): a search of a user's devices for a
        key that found none is only worth repeating once it has changed."""
        ...

    def iter_inbound_group_sessions(
        self, account: AccountKey, batch_size: int = 500
    ) -> AsyncIterator[list[InboundGroupSessionRecord]]:
        """Every stored inbound session, in batches (for key export)."""
        ...

    async def backup_batch(
        self, account: AccountKey, limit: int
    ) -> list[InboundGroupSessionRecord]:
        """Up to ``limit`` stored inbound sessions still to upload to the key backup."""
        ...

    async def mark_backed_up(
        self, account: AccountKey, keys: Sequence[tuple[RoomId, SessionId]]
    ) -> None:
        """The server has these sessions now: take them off the backup queue."""
        ...

    async def queue_all_for_backup(self, account: AccountKey) -> int:
        """Queue every stored inbound session (a new backup version); returns how many."""
        ...

    async def backup_queue_size(self, account: AccountKey) -> int: ...

    async def get_sync_token(self, account: AccountKey, stream: str) -> str | None: ...

    async def set_sync_token(self, account: AccountKey, stream: str, token: str) -> None: ...

    async def get_txn(self, account: AccountKey, txn_key: str) -> dict[str, Any] | None:
        """What was stored for a client transaction id (a response, or the ciphertext sent)."""
        ...

    async def put_txn(self, account: AccountKey, txn_key: str, value: dict[str, Any]) -> None: ...

    async def get_secret(self, account: AccountKey, name: str) -> str | None: ...

    async def put_secret(self, account: AccountKey, name: str, value: str | None) -> None:
        """Store (or with None delete) a secret such as ``access_token``."""
        ...

    async def acquire_lease(self, account: AccountKey, *, wait_ms: int = 0, want: bool = True
                            ) -> Lease:
        """Take the account's lease, waiting up to ``wait_ms`` for a live holder to go. With
        ``want`` a live holder is asked to hand it over; without, it is left alone."""
        ...

    async def unheld_accounts(self) -> list[AccountKey]:
        """Stored accounts no live instance drives (their holder let go or died) and no other
        instance is waiting for: free to be taken over unasked."""
        ...

    async def renew_leases(self, accounts: Sequence[AccountKey]
                           ) -> dict[AccountKey, Lease | None]:
        """Extend every held lease of ``accounts`` in one transaction; None for a lost one
        (taken over, even if given back since: never taken back)."""
        ...

    async def renew_lease(self, account: AccountKey) -> Lease:
        """Extend a held lease (every ``RENEW_EVERY_MS``); ``StoreLocked`` if it was lost."""
        ...

    async def release_lease(self, account: AccountKey) -> None: ...
