"""The row model every backend implements, and the batch logic written once on top of it.

A backend stores *records*: ``(account, kind, key) -> value bytes`` plus three clear columns the
store itself needs without decrypting: ``rank`` (better-session rule), ``group`` (replay rows by
session) and ``ts`` (pruning). SQLite and PostgreSQL hash keys and groups and encrypt values
(``sql.SqlTxn``); memory keeps them as they are. Encoding (pickling) happens on the caller's
thread, in ``plan_changes``; only bytes cross to the writer, where ``apply_ops`` runs inside one
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import StoreLocked
from e2eproxy.store import codec, kinds
from e2eproxy.store.base import AccountKey

Key = tuple[str, ...]

# Rows that are not engine records of a registered kind (see ``kinds`` for those).
ACCOUNT = "account"
TO_DEVICE = "todevice"
SYNC_TOKEN = "sync"
TXN = "txn"
SECRET = "secret"
INBOUND = kinds.INBOUND.row
REPLAY = kinds.REPLAY.row
REQUEST = kinds.REQUEST.row
# Inbound sessions still to upload to the server-side key backup (see ``backup_queue``).
BACKUP_QUEUE = "backupq"


@dataclass(frozen=True, slots=True)
class Put:
    """Upsert one record. ``better``: keep the stored row when its rank is lower or equal."""

    kind: str
    key: Key
    value: bytes
    rank: int = 0
    group: Key = ()
    ts: int = 0
    better: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    key: Key


@dataclass(frozen=True, slots=True)
class Prune:
    """Delete the account's records of ``kind`` with ``ts`` before ``before_ts``."""

    kind: str
    before_ts: int


Op = Put | Delete | Prune


@dataclass(frozen=True, slots=True)
class LeaseRow:
    holder: str
    expires_ms: int
    generation: int
    # Another instance that wants the account (a request for it reached that instance): the
    # holder hands it over at its next renewal.
    wanted_by: str | None = None


class Txn(Protocol):
    """One open transaction of a backend; every method runs on the backend's writer."""

    def account_id(self, account: AccountKey, create: bool) -> int | None: ...

    def list_accounts(self) -> list[AccountKey]: ...

    def delete_account(self, acct: int) -> None: ...

    def put(self, acct: int, op: Put) -> None: ...

    def get(self, acct: int, kind: str, key: Key) -> bytes | None: ...

    def delete(self, acct: int, kind: str, key: Key) -> None: ...

    def prune(self, acct: int, kind: str, before_ts: int) -> None: ...

    def scan(
        self,
        acct: int,
        kind: str,
        *,
        group: Key | None = None,
        after: int = 0,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[tuple[int, bytes]]:
        """``(position, value)`` in insertion order (or newest first), after ``position``."""
        ...

    def count(self, acct: int, kind: str) -> int: ...

    def lease_get(self, account: AccountKey) -> LeaseRow | None: ...

    def lease_put(self, account: AccountKey, row: LeaseRow | None) -> None: ...

    def expired_leases(self, now_ms: int) -> list[tuple[AccountKey, LeaseRow]]:
        """The stored accounts whose lease has expired (or was given back) by ``now_ms``."""
        ...


def plan_changes(
    changes: Changes,
    pickle_key: bytes,
    now_ms: int,
    sync_tokens: Mapping[str, str] | None = None,
    txns: Mapping[str, dict[str, Any]] | None = None,
) -> list[Op]:
    """Encode a batch into row operations (runs on the caller's thread: it pickles)."""
    ops: list[Op] = []
    dumps = codec.dumps
    if changes.account is not None:
        ops.append(Put(ACCOUNT, (), dumps(codec.account_to(changes.account, pickle_key))))
    # Removed before upserted: a key is never both in one batch, but keep the order safe.
    for kind in kinds.KINDS:
        ops.extend(Delete(kind.row, key) for key in kind.removed_keys(changes))
    for kind in kinds.KINDS:
        for record in getattr(changes, kind.changes):
            ops.append(_upsert(kind, record, pickle_key))
    # Every new or better inbound session waits for the key backup, unless it came from it.
    ops.extend(backup_queue_put(r.room_id, r.session_id)
               for r in changes.inbound_group_sessions if not r.backed_up)
    # Added (in the loop above) before removed: a request can be both within one batch.
    ops.extend(Delete(REQUEST, (request_id,)) for request_id in changes.requests_removed)
    for digest in changes.to_device_hashes:
        ops.append(Put(TO_DEVICE, (digest,), dumps({"h": digest}), ts=now_ms))
    for stream, token in (sync_tokens or {}).items():
        ops.append(Put(SYNC_TOKEN, (stream,), dumps({"token": token})))
    for txn_key, response in (txns or {}).items():
        ops.append(Put(TXN, (txn_key,), dumps({"v": response}), ts=now_ms))
    return ops


def backup_queue_put(room_id: str, session_id: str) -> Put:
    return Put(BACKUP_QUEUE, (room_id, session_id), codec.dumps({"r": room_id, "s": session_id}))


def _upsert(kind: kinds.RecordKind, record: Any, pickle_key: bytes) -> Op:
    key = kind.key(record)
    if kind.deleted is not None and kind.deleted(record):
        return Delete(kind.row, key)
    value = codec.dumps(kind.encode(record, pickle_key))
    return Put(
        kind.row, key, value,
        rank=kind.rank(record) if kind.rank else 0,
        group=kind.group(record) if kind.group else (),
        better=kind.rank is not None,
    )


def apply_ops(txn: Txn, account: AccountKey, ops: list[Op], fence: LeaseRow | None = None) -> None:
    """Run ``ops`` for ``account`` inside the caller's transaction (all or nothing there)."""
    if fence is not None:
        check_fence(txn, account, fence)
    acct = txn.account_id(account, create=True)
    assert acct is not None
    for op in ops:
        if isinstance(op, Put):
            txn.put(acct, op)
        elif isinstance(op, Delete):
            txn.delete(acct, op.kind, op.key)
        else:
            txn.prune(acct, op.kind, op.before_ts)


def check_fence(txn: Txn, account: AccountKey, fence: LeaseRow) -> None:
    """Refuse to write for a holder whose lease was taken over (its state is stale)."""
    row = txn.lease_get(account)
    if row is None or row.holder != fence.holder or row.generation != fence.generation:
        raise StoreLocked(
            f"lost the lease on {account.user_id}/{account.device_id} to another process; "
            "nothing was saved"
        )
