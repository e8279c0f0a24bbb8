"""``RecordStore``: the ``Store`` contract implemented once over any backend's ``Txn``.

A backend supplies ``run(fn)``: run ``fn(txn)`` in one transaction (rolled back if it raises)
on its writer. ``fn`` may be run again after a write conflict (PostgreSQL), so it acts only
through ``txn``. This class does the encoding, decoding and lease logic on the caller's side.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from e2eproxy.crypto.changes import (
    Changes,
    EngineSnapshot,
    InboundGroupSessionRecord,
    ReplayRecord,
)
from e2eproxy.crypto.clock import Clock
from e2eproxy.store import backup_queue, codec, kinds
from e2eproxy.store import txn as t
from e2eproxy.store.base import (
    SNAPSHOT_TO_DEVICE_HASHES,
    TO_DEVICE_HASH_TTL_MS,
    TXN_TTL_MS,
    AccountKey,
    Lease,
)
from e2eproxy.store.leases import LeaseKeeper
from e2eproxy.types import RoomId, SessionId

T = TypeVar("T")


class Backend(Protocol):
    """Where the rows live; see ``MemoryBackend``, ``SqliteBackend`` and ``PostgresBackend``."""

    @property
    def pickle_key(self) -> bytes: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, fn: Callable[[t.Txn], T]) -> T: ...


class SystemClock:
    """Wall-clock milliseconds (the store is I/O shell, so it may read the clock)."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def new_holder_id() -> str:
    """A lease holder id: unique per store instance, readable in a 'locked by' message."""
    return f"pid{os.getpid()}-{os.urandom(4).hex()}"


class RecordStore:
    """The ``Store`` protocol over a ``Backend``."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        holder: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        site: str | None = None,
    ) -> None:
        """``site``: the data dir claim's (data_dir_claim.py) of the one process serving it.
        Holder ids start with it, and a lease under it that is not ours was left by a dead
        predecessor and is taken at once."""
        self._backend = backend
        self._clock: Clock = clock or SystemClock()
        gone = None if site is None else f"{site}/"
        holder = holder or new_holder_id()
        self._leases = LeaseKeeper(backend.run, self._clock,
                                   holder if gone is None else gone + holder, sleep, gone=gone)
        self._room_keys_saved: dict[str, int] = {}

    async def open(self) -> None:
        await self._backend.open()

    async def close(self) -> None:
        await self._leases.release_all()
        await self._backend.close()

    async def list_accounts(self) -> list[AccountKey]:
        return await self._backend.run(lambda txn: txn.list_accounts())

    async def has_account(self, account: AccountKey) -> bool:
        return await self._backend.run(
            lambda txn: txn.account_id(account, create=False) is not None)

    async def delete_account(self, account: AccountKey) -> None:
        def delete(txn: t.Txn) -> None:
            acct = txn.account_id(account, create=False)
            if acct is not None:
                txn.delete_account(acct)
            txn.lease_put(account, None)

        await self._backend.run(delete)
        self._leases.forget(account)

    async def save(
        self,
        account: AccountKey,
        changes: Changes,
        *,
        sync_tokens: Mapping[str, str] | None = None,
        txns: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        now = self._clock.now_ms()
        ops = t.plan_changes(changes, self._backend.pickle_key, now, sync_tokens, txns)
        if changes.to_device_hashes:
            ops.append(t.Prune(t.TO_DEVICE, now - TO_DEVICE_HASH_TTL_MS))
        if txns:
            ops.append(t.Prune(t.TXN, now - TXN_TTL_MS))
        await self._write(account, ops)

    async def _write(self, account: AccountKey, ops: list[t.Op]) -> None:
        fence = self._leases.fence(account)
        await self._backend.run(lambda txn: t.apply_ops(txn, account, ops, fence))
        # Counted once committed: a search that read the count before sees it change.
        if any(isinstance(op, t.Put) and op.kind == t.INBOUND for op in ops):
            user = account.user_id
            self._room_keys_saved[user] = self._room_keys_saved.get(user, 0) + 1

    def room_keys_saved(self, user_id: str) -> int:
        return self._room_keys_saved.get(user_id, 0)

    async def load_snapshot(self, account: AccountKey) -> EngineSnapshot | None:
        raw = await self._backend.run(lambda txn: _read_snapshot(txn, account))
        if raw is None:
            return None
        key = self._backend.pickle_key
        loads = codec.loads
        snapshot = EngineSnapshot(
            account=codec.account_from(loads(raw[t.ACCOUNT][0]), key),
            to_device_hashes=[loads(v)["h"] for v in raw[t.TO_DEVICE]],
        )
        for kind in kinds.SNAPSHOT_KINDS:
            assert kind.snapshot is not None
            records = [kind.decode(loads(value), key) for value in raw[kind.row]]
            setattr(snapshot, kind.snapshot, records)
        return snapshot

    async def load_inbound_group_sessions(
        self, account: AccountKey, ids: Sequence[tuple[RoomId, SessionId]]
    ) -> tuple[list[InboundGroupSessionRecord], list[ReplayRecord]]:
        wanted = list(dict.fromkeys(ids))
        found, replays = await self._backend.run(lambda txn: _read_inbound(txn, account, wanted))
        key = self._backend.pickle_key
        sessions = [kinds.INBOUND.decode(codec.loads(v), key) for v in found]
        return sessions, [kinds.REPLAY.decode(codec.loads(v), key) for v in replays]

    async def count_inbound_group_sessions(self, account: AccountKey) -> int:
        def count(txn: t.Txn) -> int:
            acct = txn.account_id(account, create=False)
            return 0 if acct is None else txn.count(acct, t.INBOUND)

        return await self._backend.run(count)

    async def iter_inbound_group_sessions(
        self, account: AccountKey, batch_size: int = 500
    ) -> AsyncIterator[list[InboundGroupSessionRecord]]:
        position = 0
        key = self._backend.pickle_key
        while True:
            rows = await self._backend.run(
                functools.partial(_scan_page, account=account, after=position, limit=batch_size)
            )
            if not rows:
                return
            position = rows[-1][0]
            yield [kinds.INBOUND.decode(codec.loads(value), key) for _, value in rows]

    async def backup_batch(
        self, account: AccountKey, limit: int
    ) -> list[InboundGroupSessionRecord]:
        values = await self._backend.run(lambda txn: backup_queue.read_batch(txn, account, limit))
        return backup_queue.decode(values, self._backend.pickle_key)

    async def mark_backed_up(
        self, account: AccountKey, keys: Sequence[tuple[RoomId, SessionId]]
    ) -> None:
        wanted = list(keys)
        await self._backend.run(lambda txn: backup_queue.remove(txn, account, wanted))

    async def queue_all_for_backup(self, account: AccountKey) -> int:
        return await self._backend.run(lambda txn: backup_queue.queue_all(txn, account))

    async def backup_queue_size(self, account: AccountKey) -> int:
        return await self._backend.run(lambda txn: backup_queue.size(txn, account))

    async def get_sync_token(self, account: AccountKey, stream: str) -> str | None:
        value = await self._get(account, t.SYNC_TOKEN, (stream,))
        return None if value is None else str(value["token"])

    async def set_sync_token(self, account: AccountKey, stream: str, token: str) -> None:
        await self._write(account, [t.Put(t.SYNC_TOKEN, (stream,), codec.dumps({"token": token}))])

    async def get_txn(self, account: AccountKey, txn_key: str) -> dict[str, Any] | None:
        value = await self._get(account, t.TXN, (txn_key,))
        if value is None:
            return None
        result: dict[str, Any] = value["v"]
        return result

    async def put_txn(self, account: AccountKey, txn_key: str, value: dict[str, Any]) -> None:
        await self.save(account, Changes(), txns={txn_key: value})

    async def get_secret(self, account: AccountKey, name: str) -> str | None:
        value = await self._get(account, t.SECRET, (name,))
        return None if value is None else str(value["v"])

    async def put_secret(self, account: AccountKey, name: str, value: str | None) -> None:
        if value is None:
            await self._write(account, [t.Delete(t.SECRET, (name,))])
        else:
            await self._write(account, [t.Put(t.SECRET, (name,), codec.dumps({"v": value}))])

    async def _get(self, account: AccountKey, kind: str, key: t.Key) -> dict[str, Any] | None:
        def get(txn: t.Txn) -> bytes | None:
            acct = txn.account_id(account, create=False)
            return None if acct is None else txn.get(acct, kind, key)

        raw = await self._backend.run(get)
        return None if raw is None else codec.loads(raw)

    async def acquire_lease(self, account: AccountKey, *, wait_ms: int = 0, want: bool = True
                            ) -> Lease:
        return await self._leases.acquire(account, wait_ms, want)

    async def unheld_accounts(self) -> list[AccountKey]:
        return await self._leases.unheld()

    async def renew_lease(self, account: AccountKey) -> Lease:
        return await self._leases.renew(account)

    async def renew_leases(self, accounts: Sequence[AccountKey]
                           ) -> dict[AccountKey, Lease | None]:
        return await self._leases.renew_many(list(accounts))

    async def release_lease(self, account: AccountKey) -> None:
        await self._leases.release(account)


def _read_snapshot(txn: t.Txn, account: AccountKey) -> dict[str, list[bytes]] | None:
    acct = txn.account_id(account, create=False)
    if acct is None:
        return None
    state = txn.get(acct, t.ACCOUNT, ())
    if state is None:
        return None
    raw = {kind.row: [v for _, v in txn.scan(acct, kind.row)] for kind in kinds.SNAPSHOT_KINDS}
    raw[t.ACCOUNT] = [state]
    recent = txn.scan(acct, t.TO_DEVICE, newest_first=True, limit=SNAPSHOT_TO_DEVICE_HASHES)
    raw[t.TO_DEVICE] = [v for _, v in reversed(recent)]
    return raw


def _read_inbound(
    txn: t.Txn, account: AccountKey, ids: list[tuple[RoomId, SessionId]]
) -> tuple[list[bytes], list[bytes]]:
    acct = txn.account_id(account, create=False)
    if acct is None:
        return [], []
    found: list[bytes] = []
    replays: list[bytes] = []
    for room_id, session_id in ids:
        value = txn.get(acct, t.INBOUND, (room_id, session_id))
        if value is not None:
            found.append(value)
            replays.extend(v for _, v in txn.scan(acct, t.REPLAY, group=(room_id, session_id)))
    return found, replays


def _scan_page(
    txn: t.Txn, *, account: AccountKey, after: int, limit: int
) -> list[tuple[int, bytes]]:
    acct = txn.account_id(account, create=False)
    return [] if acct is None else txn.scan(acct, t.INBOUND, after=after, limit=limit)
