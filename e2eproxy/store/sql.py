"""What the SQL backends share: the encrypted row model and the wrapped data key.

SQLite and PostgreSQL keep the same rows the same way: ids only as keyed hashes
(``StoreKeys.index``), values AES-256-GCM with the row identity as associated data, and a
``meta`` table holding the store id and the wrapped data key. ``SqlTxn`` writes that encoding
once; a backend's subclass supplies how a statement runs, how an account row is inserted, and
the few clauses where the dialects differ. Statements use ``?`` placeholders.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2eproxy.errors import StoreError
from e2eproxy.store import secrets
from e2eproxy.store.base import AccountKey
from e2eproxy.store.secrets import KeyringBackend, StoreKeys
from e2eproxy.store.txn import Key, LeaseRow, Put
from e2eproxy.types import DeviceId, UserId

Row = tuple[Any, ...]


class SqlTxn(ABC):
    """A ``Txn`` over one open SQL transaction: hashed keys, encrypted values."""

    # The column that orders a kind's records (insertion order) and pages them.
    POSITION = "rowid"
    # Appended to the lease read: a backend with row locks takes the row here.
    LEASE_LOCK = ""
    LEASE_UPSERT = (
        "INSERT OR REPLACE INTO leases (lookup, holder, expires_ms, generation, wanted_by)"
        " VALUES (?, ?, ?, ?, ?)"
    )

    def __init__(self, keys: StoreKeys) -> None:
        self._k = keys

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """Run a query and return all its rows."""

    @abstractmethod
    def _exec(self, sql: str, params: Sequence[Any]) -> None:
        """Run a statement that returns no rows."""

    @abstractmethod
    def _insert_account(self, lookup: bytes, blob: bytes) -> int:
        """Insert an account row (or find the one a concurrent writer just inserted)."""

    def _one(self, sql: str, params: Sequence[Any]) -> Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    @staticmethod
    def _aad(kind: str, acct: int, lookup: bytes) -> bytes:
        return f"{kind}|{acct}|".encode() + lookup

    def account_id(self, account: AccountKey, create: bool) -> int | None:
        lookup = self._k.index("account", account.user_id, account.device_id)
        row = self._one("SELECT id FROM accounts WHERE lookup = ?", (lookup,))
        if row is not None:
            return int(row[0])
        if not create:
            return None
        ident = json.dumps([account.user_id, account.device_id]).encode()
        return self._insert_account(lookup, self._k.encrypt(b"account|" + lookup, ident))

    def list_accounts(self) -> list[AccountKey]:
        accounts = []
        for lookup, blob in self._rows("SELECT lookup, ident FROM accounts", ()):
            user_id, device_id = json.loads(self._k.decrypt(b"account|" + bytes(lookup), blob))
            accounts.append(AccountKey(UserId(user_id), DeviceId(device_id)))
        return sorted(accounts)

    def delete_account(self, acct: int) -> None:
        self._exec("DELETE FROM records WHERE acct = ?", (acct,))
        self._exec("DELETE FROM accounts WHERE id = ?", (acct,))

    def put(self, acct: int, op: Put) -> None:
        lookup = self._k.index(op.kind, *op.key)
        group = self._k.index("group", *op.group) if op.group else None
        value = self._k.encrypt(self._aad(op.kind, acct, lookup), op.value)
        # The better-session rule: an upsert that only wins with a strictly lower rank.
        only_if_better = " WHERE excluded.rank < records.rank" if op.better else ""
        self._exec(
            "INSERT INTO records (acct, kind, key, grp, rank, ts, value)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (acct, kind, key) DO UPDATE SET"
            " grp = excluded.grp, rank = excluded.rank, ts = excluded.ts,"
            " value = excluded.value" + only_if_better,
            (acct, op.kind, lookup, group, op.rank, op.ts, value),
        )

    def get(self, acct: int, kind: str, key: Key) -> bytes | None:
        lookup = self._k.index(kind, *key)
        row = self._one(
            "SELECT value FROM records WHERE acct = ? AND kind = ? AND key = ?",
            (acct, kind, lookup),
        )
        return None if row is None else self._k.decrypt(self._aad(kind, acct, lookup), row[0])

    def delete(self, acct: int, kind: str, key: Key) -> None:
        self._exec(
            "DELETE FROM records WHERE acct = ? AND kind = ? AND key = ?",
            (acct, kind, self._k.index(kind, *key)),
        )

    def prune(self, acct: int, kind: str, before_ts: int) -> None:
        self._exec(
            "DELETE FROM records WHERE acct = ? AND kind = ? AND ts < ?", (acct, kind, before_ts)
        )

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
        pos = self.POSITION
        sql = f"SELECT {pos}, key, value FROM records WHERE acct = ? AND kind = ? AND {pos} > ?"
        params: list[Any] = [acct, kind, after]
        if group is not None:
            sql += " AND grp = ?"
            params.append(self._k.index("group", *group))
        sql += f" ORDER BY {pos} DESC" if newest_first else f" ORDER BY {pos}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            (position, self._k.decrypt(self._aad(kind, acct, bytes(lookup)), value))
            for position, lookup, value in self._rows(sql, params)
        ]

    def count(self, acct: int, kind: str) -> int:
        row = self._one("SELECT count(*) FROM records WHERE acct = ? AND kind = ?", (acct, kind))
        return 0 if row is None else int(row[0])

    def _lease_lookup(self, account: AccountKey) -> bytes:
        return self._k.index("lease", account.user_id, account.device_id)

    def lease_get(self, account: AccountKey) -> LeaseRow | None:
        row = self._one(
            "SELECT holder, expires_ms, generation, wanted_by FROM leases WHERE lookup = ?"
            + self.LEASE_LOCK,
            (self._lease_lookup(account),),
        )
        return None if row is None else LeaseRow(row[0], row[1], row[2], row[3])

    def lease_put(self, account: AccountKey, row: LeaseRow | None) -> None:
        lookup = self._lease_lookup(account)
        if row is None:
            self._exec("DELETE FROM leases WHERE lookup = ?", (lookup,))
            return
        self._exec(self.LEASE_UPSERT,
                   (lookup, row.holder, row.expires_ms, row.generation, row.wanted_by))

    def expired_leases(self, now_ms: int) -> list[tuple[AccountKey, LeaseRow]]:
        rows = self._rows(
            "SELECT lookup, holder, expires_ms, generation, wanted_by FROM leases"
            " WHERE expires_ms <= ?", (now_ms,))
        if not rows:  # the usual answer: the accounts are read (and decrypted) only when needed
            return []
        by_lookup = {self._lease_lookup(a): a for a in self.list_accounts()}
        expired = [(by_lookup.get(bytes(lookup)), LeaseRow(holder, expires, generation, wanted))
                   for lookup, holder, expires, generation, wanted in rows]
        return [(account, row) for account, row in expired if account is not None]


@dataclass(frozen=True)
class KeySettings:
    """Where a SQL backend's data key comes from (see ``secrets``), and how it is stored."""

    data_dir: Path
    passphrase: str | None = None
    use_keyring: bool = True
    keyring: KeyringBackend | None = None
    scrypt_n: int = secrets.SCRYPT_N

    def _tuned(self, source: secrets.KekSource) -> secrets.KekSource:
        if isinstance(source, secrets.PassphraseSource):
            source.n = self.scrypt_n
        return source

    def new_key(self) -> tuple[str, bytes, str]:
        """A new store's id, data key and wrapped key (as stored in ``meta``)."""
        source = secrets.choose_source(
            self.data_dir, self.passphrase, self.use_keyring, self.keyring
        )
        store_id = str(uuid.uuid4())
        data_key, record = secrets.new_wrapped_key(self._tuned(source), store_id)
        return store_id, data_key, json.dumps(record)

    def unlock(self, meta: Mapping[str, str], where: str) -> bytes:
        """The data key from the ``meta`` rows; reads only (``WrongPassphrase`` writes nothing)."""
        if "store_id" not in meta or "data_key" not in meta:
            raise StoreError(f"{where} has a schema but no store key; it is not usable")
        record = json.loads(meta["data_key"])
        source = secrets.source_for_existing(
            record.get("kind", ""), self.data_dir, self.passphrase, self.keyring
        )
        return secrets.unwrap_key(source, meta["store_id"], record)

    def rewrap(self, source: secrets.KekSource, store_id: str, data_key: bytes) -> str:
        """The ``meta`` value of `data_key` wrapped under a key from `source`."""
        return json.dumps(secrets.wrap_key(self._tuned(source), store_id, data_key))


def key_kind(wrapped: str) -> str:
    """What wraps a stored data key: "passphrase", "keyring" or "keyfile"."""
    return str(json.loads(wrapped).get("kind", ""))
