"""The default store: one SQLite file in the data dir, driven by one dedicated writer thread.

Every call runs on that thread (a single-thread executor owns the only connection), inside one
``BEGIN IMMEDIATE`` transaction, so a saved batch is all or nothing. WAL with
``synchronous=FULL``: a committed batch survives a crash or power loss.
Opening reads the schema version and unwraps the data key before writing anything, so a newer
schema or a wrong passphrase leaves the file exactly as it was.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from e2eproxy.errors import StoreError
from e2eproxy.store import secrets
from e2eproxy.store.migrations import MIGRATIONS, Migration, check_version, migrate
from e2eproxy.store.records import RecordStore
from e2eproxy.store.secrets import KeyringBackend, StoreKeys
from e2eproxy.store.sql import KeySettings, Row, SqlTxn, key_kind
from e2eproxy.store.threaded import ThreadedBackend
from e2eproxy.store.txn import Txn

T = TypeVar("T")
DB_NAME = "e2eproxy.db"
BUSY_TIMEOUT_MS = 5_000


class SqliteTxn(SqlTxn):
    """A ``SqlTxn`` on the writer's connection."""

    def __init__(self, conn: sqlite3.Connection, keys: StoreKeys) -> None:
        super().__init__(keys)
        self._c = conn

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        return self._c.execute(sql, params).fetchall()

    def _exec(self, sql: str, params: Sequence[Any]) -> None:
        self._c.execute(sql, params)

    def _insert_account(self, lookup: bytes, blob: bytes) -> int:
        # One writer at a time (BEGIN IMMEDIATE): nobody can have inserted it meanwhile.
        cursor = self._c.execute(
            "INSERT INTO accounts (lookup, ident) VALUES (?, ?)", (lookup, blob)
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def _owner_only(path: Path) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm files the same mode), and
    tighten one that an older version created readable by others: values are encrypted, but
    who talks to whom and when is not."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


class SqliteBackend(ThreadedBackend):
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
        super().__init__(1, "e2eproxy-store")  # one writer: SQLite has one write lock anyway
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / filename
        self._key_settings = KeySettings(
            self.data_dir, passphrase, use_keyring, keyring_backend, scrypt_n
        )
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._conn: sqlite3.Connection | None = None

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

    def _open_on_thread(self) -> None:
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
        return self._key_settings.unlock(meta, str(self.path))

    def _create(self, conn: sqlite3.Connection) -> None:
        store_id, data_key, wrapped = self._key_settings.new_key()
        self._keys = StoreKeys(data_key)

        def store_key(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("store_id", store_id), ("data_key", wrapped)],
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
            return key_kind(row[0])

        return await self._call(read)

    async def rewrap(self, source: secrets.KekSource) -> None:
        """Wrap the (unchanged) data key under a key from `source`: a new passphrase, or a move
        between passphrase, keyring and key file. Nothing else in the store changes."""
        await self._call(lambda: self._rewrap_on_writer(source))

    def _rewrap_on_writer(self, source: secrets.KekSource) -> None:
        conn = self._conn
        if conn is None or self._keys is None:
            raise StoreError("the store is not open")
        store_id = conn.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()[0]
        wrapped = self._key_settings.rewrap(source, store_id, self._keys.data_key)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE meta SET value = ? WHERE name = 'data_key'", (wrapped,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _close_on_thread(self) -> None:
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
