"""In-memory store for tests: the same ``RecordStore`` logic over dicts, with an undo log.

Records are still encoded (pickled with a random key), so loads return fresh objects just as
SQLite does; nothing is encrypted or durable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from e2eproxy.store.base import AccountKey
from e2eproxy.store.records import RecordStore
from e2eproxy.store.txn import Key, LeaseRow, Put, Txn

T = TypeVar("T")
_MISSING = object()


@dataclass(slots=True)
class _Row:
    position: int
    value: bytes
    rank: int
    group: Key
    ts: int


class _Tables:
    def __init__(self) -> None:
        self.accounts: dict[AccountKey, int] = {}
        self.rows: dict[tuple[int, str, Key], _Row] = {}
        self.leases: dict[AccountKey, LeaseRow] = {}
        self.counter = 0


class MemoryTxn:
    """A ``Txn`` over ``_Tables``; every change is logged so ``rollback`` can undo it."""

    def __init__(self, tables: _Tables) -> None:
        self._t = tables
        self._undo: list[tuple[dict[Any, Any], Any, Any]] = []

    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.append((table, key, table.get(key, _MISSING)))
        if value is _MISSING:
            table.pop(key, None)
        else:
            table[key] = value

    def rollback(self) -> None:
        for table, key, old in reversed(self._undo):
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        self._undo.clear()

    def _next(self) -> int:
        self._t.counter += 1
        return self._t.counter

    def account_id(self, account: AccountKey, create: bool) -> int | None:
        acct = self._t.accounts.get(account)
        if acct is None and create:
            acct = self._next()
            self._set(self._t.accounts, account, acct)
        return acct

    def list_accounts(self) -> list[AccountKey]:
        return sorted(self._t.accounts)

    def delete_account(self, acct: int) -> None:
        for key in [k for k in self._t.rows if k[0] == acct]:
            self._set(self._t.rows, key, _MISSING)
        for account in [a for a, i in self._t.accounts.items() if i == acct]:
            self._set(self._t.accounts, account, _MISSING)

    def put(self, acct: int, op: Put) -> None:
        key = (acct, op.kind, op.key)
        old = self._t.rows.get(key)
        if old is not None and op.better and old.rank <= op.rank:
            return
        position = old.position if old is not None else self._next()
        self._set(self._t.rows, key, _Row(position, op.value, op.rank, op.group, op.ts))

    def get(self, acct: int, kind: str, key: Key) -> bytes | None:
        row = self._t.rows.get((acct, kind, key))
        return None if row is None else row.value

    def delete(self, acct: int, kind: str, key: Key) -> None:
        if (acct, kind, key) in self._t.rows:
            self._set(self._t.rows, (acct, kind, key), _MISSING)

    def prune(self, acct: int, kind: str, before_ts: int) -> None:
        old = [k for k, r in self._t.rows.items() if k[:2] == (acct, kind) and r.ts < before_ts]
        for key in old:
            self._set(self._t.rows, key, _MISSING)

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
        rows = [
            (r.position, r.value)
            for k, r in self._t.rows.items()
            if k[:2] == (acct, kind) and r.position > after and (group is None or r.group == group)
        ]
        rows.sort(reverse=newest_first)
        return rows if limit is None else rows[:limit]

    def count(self, acct: int, kind: str) -> int:
        return sum(1 for k in self._t.rows if k[:2] == (acct, kind))

    def lease_get(self, account: AccountKey) -> LeaseRow | None:
        return self._t.leases.get(account)

    def lease_put(self, account: AccountKey, row: LeaseRow | None) -> None:
        self._set(self._t.leases, account, _MISSING if row is None else row)

    def expired_leases(self, now_ms: int) -> list[tuple[AccountKey, LeaseRow]]:
        return sorted((a, row) for a, row in self._t.leases.items()
                      if row.expires_ms <= now_ms and a in self._t.accounts)


class MemoryBackend:
    """Runs each transaction inline on the event loop; an exception rolls it back."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._pickle_key = os.urandom(32)

    @property
    def pickle_key(self) -> bytes:
        return self._pickle_key

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def run(self, fn: Callable[[Txn], T]) -> T:
        txn = MemoryTxn(self._tables)
        try:
            return fn(txn)
        except BaseException:
            txn.rollback()
            raise


class MemoryStore(RecordStore):
    """A ``Store`` that lives in memory only."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(MemoryBackend(), **kwargs)
