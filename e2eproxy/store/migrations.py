"""Numbered schema migrations under ``PRAGMA user_version``, each in its own transaction.

Never edit a released migration: add the next number. A database whose version is higher than
the last one here comes from a newer e2eproxy and is refused untouched.

Schema (v1). Ids never appear in the clear: ``key``/``grp``/``lookup`` are keyed hashes
(``StoreKeys.index``) and ``value``/``ident`` are AES-256-GCM with the row identity as AAD.

* ``meta(name, value)``: ``store_id`` and the wrapped data key (JSON; no secret in the clear).
* ``accounts(id, lookup, ident)``: one row per (user, device); ``ident`` holds the ids.
* ``records(acct, kind, key, grp, rank, ts, value)``: every engine record, sync token, txn entry
  and secret (see ``e2eproxy.store.txn``).
* ``leases(lookup, holder, expires_ms, generation, wanted_by)``: the cross-process lease per
  account (``wanted_by``, v3: another instance waiting for it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from e2eproxy.errors import MigrationError

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


def _v1_initial(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " lookup BLOB NOT NULL UNIQUE, ident BLOB NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE records (acct INTEGER NOT NULL, kind TEXT NOT NULL, key BLOB NOT NULL,"
        " grp BLOB, rank INTEGER NOT NULL DEFAULT 0, ts INTEGER NOT NULL DEFAULT 0,"
        " value BLOB NOT NULL, UNIQUE (acct, kind, key))"
    )
    conn.execute("CREATE INDEX records_grp ON records (acct, kind, grp) WHERE grp IS NOT NULL")
    conn.execute(
        "CREATE TABLE leases (lookup BLOB PRIMARY KEY, holder TEXT NOT NULL,"
        " expires_ms INTEGER NOT NULL, generation INTEGER NOT NULL)"
    )


def _v2_prune_index(conn: sqlite3.Connection) -> None:
    # To-device hashes and txn entries are pruned by age on every save that adds some.
    conn.execute("CREATE INDEX records_ts ON records (acct, kind, ts)")


def _v3_lease_handover(conn: sqlite3.Connection) -> None:
    # Another instance asks for an account: the holder hands it over at its next renewal.
    conn.execute("ALTER TABLE leases ADD COLUMN wanted_by TEXT")


MIGRATIONS: list[Migration] = [
    ("initial schema", _v1_initial),
    ("index for pruning by age", _v2_prune_index),
    ("lease handover", _v3_lease_handover),
]


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def refuse_newer(version: int, known: int) -> None:
    """``MigrationError`` (before any write) for a schema newer than this program knows."""
    if version > known:
        raise MigrationError(
            f"the store was written by a newer e2eproxy (schema version {version}, this one "
            f"knows up to {known}); upgrade e2eproxy. The store was not changed."
        )


def check_version(conn: sqlite3.Connection, migrations: list[Migration]) -> int:
    """The current version; ``MigrationError`` (and no write) if it is newer than we know."""
    version = schema_version(conn)
    refuse_newer(version, len(migrations))
    return version


def migrate(
    conn: sqlite3.Connection,
    migrations: list[Migration],
    on_create: Callable[[sqlite3.Connection], None] | None = None,
) -> None:
    """Apply every missing migration in order, each in one transaction.

    ``on_create`` runs inside migration 1's transaction (it stores the wrapped data key), so a
    store either exists with its key or does not exist at all.
    """
    version = check_version(conn, migrations)
    for number in range(version + 1, len(migrations) + 1):
        description, step = migrations[number - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) != number - 1:  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            step(conn)
            if number == 1 and on_create is not None:
                on_create(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except Exception as exc:
            conn.execute("ROLLBACK")
            raise MigrationError(f"store migration {number} ({description}) failed: {exc}") from exc
