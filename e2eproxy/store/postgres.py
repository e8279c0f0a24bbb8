"""A PostgreSQL store: SQLite's rows and encryption, in a database several processes may share.

Threads, not asyncio: ``RecordStore`` runs ``fn(txn)`` synchronously on the backend's writer
(the ``Txn`` protocol SQLite shares), so psycopg's sync API runs on a small thread pool, and
each thread borrows a connection from a ``psycopg_pool`` pool of the same size. Async psycopg
would need an async ``Txn`` everywhere. Unlike SQLite's one writer, transactions of different
accounts run side by side; the pool reconnects after a server restart and checks a connection
before lending it, so a dead one is never used for a batch.

Every ``run(fn)`` is one REPEATABLE READ transaction: ``fn`` reads one snapshot, as in SQLite.
Leases across processes: the lease row is read ``FOR UPDATE``, so taking, renewing and every
fenced save of one account serialize on that row. A row that another process changed (or
inserted) after our snapshot began makes PostgreSQL raise a serialization failure; ``run`` then
rolls back and runs ``fn`` again on a fresh snapshot (``fn`` has no effect outside its
transaction), which sees the new holder: a holder that lost its lease gets ``StoreLocked`` and
writes nothing, and a takeover waits for a fenced save in flight to commit.

Opening (one plain connection, READ COMMITTED) reads the schema version and unwraps the data key
before writing anything: a newer schema or a wrong passphrase leaves the database as it was.
The data key's source (passphrase, keyring, key file in ``data_dir``) works as for SQLite; on
several hosts, only the passphrase is the same everywhere.
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from e2eproxy.config import mask_url
from e2eproxy.errors import StoreError
from e2eproxy.store import secrets
from e2eproxy.store.pg_migrations import MIGRATIONS, PgMigration, check_version, migrate
from e2eproxy.store.records import RecordStore
from e2eproxy.store.secrets import KeyringBackend, StoreKeys
from e2eproxy.store.sql import KeySettings, Row, SqlTxn, key_kind
from e2eproxy.store.threaded import ThreadedBackend
from e2eproxy.store.txn import Txn

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]
POOL_SIZE = 4
CONNECT_TIMEOUT_S = 10
# Conflicts are per account (two processes at a lease handover), so a few retries suffice.
MAX_ATTEMPTS = 8
RETRY_BACKOFF_S = 0.01
_RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """``?`` placeholders (shared SQL) to psycopg's ``%s``; the SQL holds no other ? or %."""
    return sql.replace("?", "%s")


class PostgresTxn(SqlTxn):
    """A ``SqlTxn`` on one pooled connection inside its transaction."""

    POSITION = "pos"
    LEASE_LOCK = " FOR UPDATE"
    LEASE_UPSERT = (
        "INSERT INTO leases (lookup, holder, expires_ms, generation, wanted_by)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (lookup) DO UPDATE SET holder = excluded.holder,"
        " expires_ms = excluded.expires_ms, generation = excluded.generation,"
        " wanted_by = excluded.wanted_by"
    )

    def __init__(self, conn: Conn, keys: StoreKeys) -> None:
        super().__init__(keys)
        self._c = conn

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        return self._c.execute(_pg(sql), params).fetchall()

    def _exec(self, sql: str, params: Sequence[Any]) -> None:
        self._c.execute(_pg(sql), params)

    def _insert_account(self, lookup: bytes, blob: bytes) -> int:
        # Another process inserting the same account at once: ours waits for it, then fails
        # to serialize and ``run`` retries, finding that row.
        row = self._c.execute(
            "INSERT INTO accounts (lookup, ident) VALUES (%s, %s)"
            " ON CONFLICT (lookup) DO NOTHING RETURNING id",
            (lookup, blob),
        ).fetchone()
        if row is None:
            row = self._c.execute("SELECT id FROM accounts WHERE lookup = %s", (lookup,)).fetchone()
        if row is None:
            raise errors.SerializationFailure("the account row vanished while it was inserted")
        return int(row[0])


def _configure(conn: Conn) -> None:
    conn.isolation_level = IsolationLevel.REPEATABLE_READ


class PostgresBackend(ThreadedBackend):
    """Owns the thread pool and the connection pool; see the module docstring."""

    def __init__(
        self,
        url: str,
        data_dir: Path,
        *,
        passphrase: str | None = None,
        use_keyring: bool = True,
        keyring_backend: KeyringBackend | None = None,
        scrypt_n: int = secrets.SCRYPT_N,
        migrations: list[PgMigration] | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        super().__init__(pool_size, "e2eproxy-pg")
        self._url = url  # may hold a password: never put it in a message or a log line
        self.data_dir = Path(data_dir)
        self._key_settings = KeySettings(
            self.data_dir, passphrase, use_keyring, keyring_backend, scrypt_n
        )
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._pool_size = pool_size
        self._pool: ConnectionPool[Conn] | None = None

    @property
    def where(self) -> str:
        """The database for messages, password masked."""
        return mask_url(self._url)

    def _transaction(self, fn: Callable[[Txn], T]) -> T:
        keys = self._keys
        if keys is None:
            raise StoreError("the store is not open")
        return self._in_transaction(lambda conn: fn(PostgresTxn(conn, keys)))

    def _in_transaction(self, fn: Callable[[Conn], T]) -> T:
        """``fn`` in one transaction on a pooled connection, run again after a conflict."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open")
        for attempt in itertools.count(1):
            try:
                with pool.connection() as conn, conn.transaction():
                    return fn(conn)
            except _RETRYABLE as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise StoreError(f"PostgreSQL store: {attempt} conflicts in a row") from exc
                time.sleep(random.uniform(0, RETRY_BACKOFF_S * attempt))
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL store: {exc}") from exc
        raise AssertionError("unreachable")

    def _connect(self) -> Conn:
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="e2eproxy",
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the PostgreSQL store {self.where}: {exc}") from exc

    def _open_on_thread(self) -> None:
        with self._connect() as conn:
            try:
                if check_version(conn, self._migrations) == 0:
                    self._create(conn)
                else:
                    self._keys = StoreKeys(self._unlock(conn))  # reads only: WrongPassphrase
                migrate(conn, self._migrations)
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL store {self.where}: {exc}") from exc
        pool: ConnectionPool[Conn] = ConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "application_name": "e2eproxy"},
            configure=_configure,
            check=ConnectionPool.check_connection,
            name="e2eproxy-store",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            pool.close()
            raise StoreError(f"cannot connect to the PostgreSQL store {self.where}: {exc}") from exc
        self._pool = pool

    def _meta(self, conn: Conn) -> dict[str, str]:
        return {str(n): str(v) for n, v in conn.execute("SELECT name, value FROM meta")}

    def _unlock(self, conn: Conn) -> bytes:
        return self._key_settings.unlock(self._meta(conn), self.where)

    def _create(self, conn: Conn) -> None:
        store_id, data_key, wrapped = self._key_settings.new_key()
        self._keys = StoreKeys(data_key)

        def store_key(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('store_id', %s), ('data_key', %s)",
                (store_id, wrapped),
            )

        migrate(conn, self._migrations, on_create=store_key)
        if self._meta(conn).get("store_id") != store_id:  # another process created it first
            self._keys = StoreKeys(self._unlock(conn))

    async def key_kind(self) -> str:
        """What wraps the data key now: "passphrase", "keyring" or "keyfile"."""
        meta = await self._call(lambda: self._in_transaction(self._meta))
        return key_kind(meta["data_key"])

    async def rewrap(self, source: secrets.KekSource) -> None:
        """Wrap the (unchanged) data key under a key from `source`: a new passphrase, or a move
        between passphrase, keyring and key file. One row changes; safe while others run."""
        await self._call(lambda: self._rewrap_on_thread(source))

    def _rewrap_on_thread(self, source: secrets.KekSource) -> None:
        if self._keys is None:
            raise StoreError("the store is not open")
        store_id = self._in_transaction(self._meta)["store_id"]
        # Wrapped before the transaction: a retried one must not write the keyring again.
        wrapped = self._key_settings.rewrap(source, store_id, self._keys.data_key)
        self._in_transaction(
            lambda conn: conn.execute(
                "UPDATE meta SET value = %s WHERE name = 'data_key'", (wrapped,)
            )
        )

    def _close_on_thread(self) -> None:
        pool, self._pool = self._pool, None
        self._keys = None
        if pool is not None:
            pool.close()


class PostgresStore(RecordStore):
    """``PostgresStore(url, data_dir, passphrase=..., use_keyring=...)``; ``data_dir`` holds
    only the key file, when the data key is wrapped by one."""

    def __init__(self, url: str, data_dir: Path, **kwargs: Any) -> None:
        names = ("passphrase", "use_keyring", "keyring_backend", "scrypt_n", "migrations")
        backend_args = {name: kwargs.pop(name) for name in (*names, "pool_size") if name in kwargs}
        self.backend = PostgresBackend(url, data_dir, **backend_args)
        super().__init__(self.backend, **kwargs)
