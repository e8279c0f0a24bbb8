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
from e2eproxy.store import codec
from e2eproxy.store.base import AccountKey

Key = tuple[str, ...]

ACCOUNT = "account"
OLM = "olm"
INBOUND = "igs"
OUTBOUND = "ogs"
DEVICE = "device"
USER = "user"
ROOM = "room"
REPLAY = "replay"
TO_DEVICE = "todevice"
WITHHELD = "withheld"
REQUEST = "request"
SYNC_TOKEN = "sync"
TXN = "txn"
SECRET = "secret"


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


def inbound_rank(first_known_index: int, imported: bool) -> int:
    """Lower is better: the earlier index wins; at equal index, direct beats imported."""
    return first_known_index * 2 + (1 if imported else 0)


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
    for olm in changes.olm_sessions:
        ops.append(Put(OLM, (olm.session_id,), dumps(codec.olm_to(olm, pickle_key))))
    for igs in changes.inbound_group_sessions:
        value = dumps(codec.inbound_to(igs, pickle_key))
        rank = inbound_rank(igs.first_known_index, igs.imported)
        ops.append(Put(INBOUND, (igs.room_id, igs.session_id), value, rank=rank, better=True))
    for room_id in changes.outbound_group_sessions_removed:
        ops.append(Delete(OUTBOUND, (room_id,)))
    for ogs in changes.outbound_group_sessions:
        ops.append(Put(OUTBOUND, (ogs.room_id,), dumps(codec.outbound_to(ogs, pickle_key))))
    for device in changes.devices:
        key = (device.user_id, device.device_id)
        ops.append(Put(DEVICE, key, dumps(codec.device_to(device))))
    for user in changes.tracked_users:
        if user.tracked:
            ops.append(Put(USER, (user.user_id,), dumps(codec.tracked_to(user))))
        else:
            ops.append(Delete(USER, (user.user_id,)))
    for room in changes.rooms:
        ops.append(Put(ROOM, (room.room_id,), dumps(codec.plain_to(room))))
    ops.extend(_plan_small(changes, now_ms, sync_tokens or {}, txns or {}))
    return ops


def _plan_small(
    changes: Changes,
    now_ms: int,
    sync_tokens: Mapping[str, str],
    txns: Mapping[str, dict[str, Any]],
) -> list[Op]:
    ops: list[Op] = []
    for replay in changes.replay_entries:
        value = codec.dumps(codec.plain_to(replay))
        index_key = (replay.session_id, str(replay.message_index))
        ops.append(Put(REPLAY, index_key, value, group=(replay.room_id, replay.session_id)))
    for digest in changes.to_device_hashes:
        ops.append(Put(TO_DEVICE, (digest,), codec.dumps({"h": digest}), ts=now_ms))
    for withheld in changes.withheld:
        value = codec.dumps(codec.plain_to(withheld))
        ops.append(Put(WITHHELD, (withheld.room_id, withheld.session_id), value))
    # Added before removed: a request can be both within one batch.
    for request in changes.requests_added:
        ops.append(Put(REQUEST, (request.id,), codec.dumps(codec.request_to(request))))
    ops.extend(Delete(REQUEST, (request_id,)) for request_id in changes.requests_removed)
    for stream, token in sync_tokens.items():
        ops.append(Put(SYNC_TOKEN, (stream,), codec.dumps({"token": token})))
    for txn_key, response in txns.items():
        ops.append(Put(TXN, (txn_key,), codec.dumps({"v": response}), ts=now_ms))
    return ops


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
