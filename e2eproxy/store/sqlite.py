"""The default store: one SQLite file in the data dir, driven by one dedicated writer thread.

Every call runs on that thread (a single-thread executor owns the only connection), inside one
``BEGIN IMMEDIATE`` transaction, so a saved batch is all or nothing. WAL with
``synchronous=FULL``: a committed batch survives a crash or power loss.
Opening reads the schema version and unwraps the data key before writing anything, so a newer
schema or a wrong passphrase leaves the file exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from e2eproxy.config import StoreConfig
from e2eproxy.errors import StoreError
from e2eproxy.store import secrets
from e2eproxy.store.base import AccountKey
from e2eproxy.store.migrations import MIGRATIONS, Migration, check_version, migrate
from e2eproxy.store.records import RecordStore
from e2eproxy.store.secrets import KeyringBackend, StoreKeys
from e2eproxy.store.txn import Key, LeaseRow, Put, Txn
from e2eproxy.types import DeviceId, UserId

T = TypeVar("T")
DB_NAME = "e2eproxy.db"
BUSY_TIMEOUT_MS = 5_000


class SqliteTxn:
    """A ``Txn`` on the writer's connection: hashed keys, encrypted values."""

    def __init__(self, conn: sqlite3.Connection, keys: StoreKeys) -> None:
        self._c = conn
        self._k = keys

    @staticmethod
    def _aad(kind: str, acct: int, lookup: bytes) -> bytes:
        return f"{kind}|{acct}|".encode() + lookup

    def account_id(self, account: AccountKey, create: bool) -> int | None:
        lookup = self._k.index("account", account.user_id, account.device_id)
        row = self._c.execute("SELECT id FROM accounts WHERE lookup = ?", (lookup,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        ident = json.dumps([account.user_id, account.device_id]).encode()
        blob = self._k.encrypt(b"account|" + lookup, ident)
        cursor = self._c.execute(
            "INSERT INTO accounts (lookup, ident) VALUES (?, ?)", (lookup, blob)
        )
        return cursor.lastrowid

    def list_accounts(self) -> list[AccountKey]:
        accounts = []
        for lookup, blob in self._c.execute("SELECT lookup, ident FROM accounts"):
            user_id, device_id = json.loads(self._k.decrypt(b"account|" + lookup, blob))
            accounts.append(AccountKey(UserId(user_id), DeviceId(device_id)))
        return sorted(accounts)

    def delete_account(self, acct: int) -> None:
        self._c.execute("DELETE FROM records WHERE acct = ?", (acct,))
        self._c.execute("DELETE FROM accounts WHERE id = ?", (acct,))

    def put(self, acct: int, op: Put) -> None:
        lookup = self._k.index(op.kind, *op.key)
        group = self._k.index("group", *op.group) if op.group else None
        value = self._k.encrypt(self._aad(op.kind, acct, lookup), op.value)
        # The better-session rule: an upsert that only wins with a strictly lower rank.
        only_if_better = " WHERE excluded.rank < records.rank" if op.better else ""
        self._c.execute(
            "INSERT INTO records (acct, kind, key, grp, rank, ts, value)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (acct, kind, key) DO UPDATE SET"
            " grp = excluded.grp, rank = excluded.rank, ts = excluded.ts,"
            " value = excluded.value" + only_if_better,
            (acct, op.kind, lookup, group, op.rank, op.ts, value),
        )

    def get(self, acct: int, kind: str, key: Key) -> bytes | None:
        lookup = self._k.index(kind, *key)
        row = self._c.execute(
            "SELECT value FROM records WHERE acct = ? AND kind = ? AND key = ?",
            (acct, kind, lookup),
        ).fetchone()
        return None if row is None else self._k.decrypt(self._aad(kind, acct, lookup), row[0])

    def delete(self, acct: int, kind: str, key: Key) -> None:
        self._c.execute(
            "DELETE FROM records WHERE acct = ? AND kind = ? AND key = ?",
            (acct, kind, self._k.index(kind, *key)),
        )

    def prune(self, acct: int, kind: str, before_ts: int) -> None:
        self._c.execute(
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
        sql = "SELECT rowid, key, value FROM records WHERE acct = ? AND kind = ? AND rowid > ?"
        params: list[Any] = [acct, kind, after]
        if group is not None:
            sql += " AND grp = ?"
            params.append(self._k.index("group", *group))
        sql += " ORDER BY rowid DESC" if newest_first else " ORDER BY rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            (rowid, self._k.decrypt(self._aad(kind, acct, lookup), value))
            for rowid, lookup, value in self._c.execute(sql, params)
        ]

    def count(self, acct: int, kind: str) -> int:
        row = self._c.execute(
            "SELECT count(*) FROM records WHERE acct = ? AND kind = ?", (acct, kind)
        ).fetchone()
        return int(row[0])

    def _lease_lookup(self, account: AccountKey) -> bytes:
        return self._k.index("lease", account.user_id, account.device_id)

    def lease_get(self, account: AccountKey) -> LeaseRow | None:
        row = self._c.execute(
            "SELECT holder, expires_ms, generation FROM leases WHERE lookup = ?",
            (self._lease_lookup(account),),
        ).fetchone()
        return None if row is None else LeaseRow(row[0], row[1], row[2])

    def lease_put(self, account: AccountKey, row: LeaseRow | None) -> None:
        lookup = self._lease_lookup(account)
        if row is None:
            self._c.execute("DELETE FROM leases WHERE lookup = ?", (lookup,))
            return
        self._c.execute(
            "INSERT OR REPLACE INTO leases (lookup, holder, expires_ms, generation)"
            " VALUES (?, ?, ?, ?)",
            (lookup, row.holder, row.expires_ms, row.generation),
        )


def _owner_only(path: Path) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm files the same mode), and
    tighten one that an older version created readable by others: values are encrypted, but
    who talks to whom and when is not."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


class SqliteBackend:
    """Owns the connection and the writer thread; see the module docstring."""

    def __init__(
        self,
        data_dir: Path,
        *,
        passphrase: str | None = None,
        use_keyring: bool = True,
        keyring_backend: KeyringBackend | None = None,
        scrypt_n: int = secrets.SCRYPT_N,
        migrations: list[Migration] | None = None,
        filename: str = DB_NAME,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / filename
        self._passphrase = passphrase
        self._use_keyring = use_keyring
        self._keyring = keyring_backend
        self._scrypt_n = scrypt_n
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._keys: StoreKeys | None = None

    @property
    def pickle_key(self) -> bytes:
        if self._keys is None:
            raise StoreError("the store is not open")
        return self._keys.pickle_key

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="e2eproxy-store")
        try:
            await self._call(self._open_on_writer)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_on_writer)
        executor.shutdown(wait=True)

    async def run(self, fn: Callable[[Txn], T]) -> T:
        return await self._call(lambda: self._transaction(fn))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _transaction(self, fn: Callable[[Txn], T]) -> T:
        conn, keys = self._conn, self._keys
        if conn is None or keys is None:
            raise StoreError("the store is not open")
        # IMMEDIATE: take the write lock up front, so a read-then-write (the lease) can
        # never deadlock against another process upgrading its own read lock.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(SqliteTxn(conn, keys))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _open_on_writer(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _owner_only(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn = conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if check_version(conn, self._migrations) == 0:
            self._create(conn)
        else:
            self._keys = StoreKeys(self._unlock(conn))  # reads only: may raise WrongPassphrase
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        migrate(conn, self._migrations)

    def _unlock(self, conn: sqlite3.Connection) -> bytes:
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        if "store_id" not in meta or "data_key" not in meta:
            raise StoreError(f"{self.path} has a schema but no store key; it is not usable")
        record = json.loads(meta["data_key"])
        source = secrets.source_for_existing(
            record.get("kind", ""), self.data_dir, self._passphrase, self._keyring
        )
        return secrets.unwrap_key(source, meta["store_id"], record)

    def _create(self, conn: sqlite3.Connection) -> None:
        source = secrets.choose_source(
            self.data_dir, self._passphrase, self._use_keyring, self._keyring
        )
        if isinstance(source, secrets.PassphraseSource):
            source.n = self._scrypt_n
        store_id = str(uuid.uuid4())
        data_key, record = secrets.new_wrapped_key(source, store_id)
        self._keys = StoreKeys(data_key)

        def store_key(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("store_id", store_id), ("data_key", json.dumps(record))],
            )

        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        migrate(conn, self._migrations, on_create=store_key)
        stored = conn.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()
        if stored is None or stored[0] != store_id:  # another process created it first
            self._keys = StoreKeys(self._unlock(conn))

    async def key_kind(self) -> str:
        """What wraps the data key now: "passphrase", "keyring" or "keyfile"."""

        def read() -> str:
            if self._conn is None:
                raise StoreError("the store is not open")
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'data_key'").fetchone()
            return str(json.loads(row[0]).get("kind", ""))

        return await self._call(read)

    async def rewrap(self, source: secrets.KekSource) -> None:
        """Wrap the (unchanged) data key under a key from `source`: a new passphrase, or a move
        between passphrase, keyring and key file. Nothing else in the store changes."""
        await self._call(lambda: self._rewrap_on_writer(source))

    def _rewrap_on_writer(self, source: secrets.KekSource) -> None:
        conn = self._conn
        if conn is None or self._keys is None:
            raise StoreError("the store is not open")
        if isinstance(source, secrets.PassphraseSource):
            source.n = self._scrypt_n
        store_id = conn.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()[0]
        record = secrets.wrap_key(source, store_id, self._keys.data_key)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE meta SET value = ? WHERE name = 'data_key'", (json.dumps(record),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _close_on_writer(self) -> None:
        conn, self._conn = self._conn, None
        self._keys = None
        if conn is not None:
            conn.close()


class SqliteStore(RecordStore):
    """The default ``Store``: ``SqliteStore(data_dir, passphrase=..., use_keyring=...)``."""

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        backend_args = {
            name: kwargs.pop(name)
            for name in (
                "passphrase",
                "use_keyring",
                "keyring_backend",
                "scrypt_n",
                "migrations",
                "filename",
            )
            if name in kwargs
        }
        self.backend = SqliteBackend(data_dir, **backend_args)
        super().__init__(self.backend, **kwargs)


async def open_store(config: StoreConfig, passphrase: str | None) -> SqliteStore:
    """The configured store, opened; pass ``Config.store_passphrase()`` as ``passphrase``.

    Raises ``WrongPassphrase``, ``MigrationError`` or ``StoreError`` with one clear line.
    """
    store = SqliteStore(config.data_dir, passphrase=passphrase, use_keyring=config.use_keyring)
    await store.open()
    return store
