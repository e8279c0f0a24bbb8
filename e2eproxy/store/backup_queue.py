"""The store's side of server-side key backup: which inbound sessions still need uploading.

Every inbound session the engine saves is queued (one small row, in the same transaction), unless
it came from the backup itself. The uploader takes a batch, uploads it, and only after the
server's answer removes those rows; a crash in between uploads them again, which the server
takes (it keeps the better copy). A new backup version queues every stored session again.
"""

from __future__ import annotations

from e2eproxy.crypto.changes import InboundGroupSessionRecord
from e2eproxy.store import codec, kinds
from e2eproxy.store import txn as t
from e2eproxy.store.base import AccountKey
from e2eproxy.types import RoomId, SessionId

QUEUE = t.BACKUP_QUEUE
SessionKey = tuple[RoomId, SessionId]


def read_batch(txn: t.Txn, account: AccountKey, limit: int) -> list[bytes]:
    """The stored inbound sessions of the first ``limit`` queued entries (a queued session no
    longer stored is dropped from the queue)."""
    acct = txn.account_id(account, create=False)
    if acct is None:
        return []
    found: list[bytes] = []
    for _, value in txn.scan(acct, QUEUE, limit=limit):
        entry = codec.loads(value)
        key = (entry["r"], entry["s"])
        session = txn.get(acct, t.INBOUND, key)
        if session is None:
            txn.delete(acct, QUEUE, key)
        else:
            found.append(session)
    return found


def remove(txn: t.Txn, account: AccountKey, keys: list[SessionKey]) -> None:
    acct = txn.account_id(account, create=False)
    if acct is not None:
        for room_id, session_id in keys:
            txn.delete(acct, QUEUE, (room_id, session_id))


def queue_all(txn: t.Txn, account: AccountKey) -> int:
    """Queue every stored inbound session (a new backup version has none of them)."""
    acct = txn.account_id(account, create=False)
    if acct is None:
        return 0
    count = 0
    for _, value in txn.scan(acct, t.INBOUND):
        entry = codec.loads(value)
        key = (entry["room_id"], entry["session_id"])
        txn.put(acct, t.backup_queue_put(*key))
        count += 1
    return count


def size(txn: t.Txn, account: AccountKey) -> int:
    acct = txn.account_id(account, create=False)
    return 0 if acct is None else txn.count(acct, QUEUE)


def decode(values: list[bytes], pickle_key: bytes) -> list[InboundGroupSessionRecord]:
    return [kinds.INBOUND.decode(codec.loads(value), pickle_key) for value in values]
