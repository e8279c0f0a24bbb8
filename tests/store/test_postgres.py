"""What only the PostgreSQL store does: unlock, migrations, nothing in the clear, config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from e2eproxy.config import StoreConfig
from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import MigrationError, StoreCorrupt, StoreError, WrongPassphrase
from e2eproxy.store import open_store
from e2eproxy.store.pg_migrations import MIGRATIONS, Conn
from e2eproxy.store.postgres import PostgresStore

from .conftest import ALICE, BOB, full_changes, save_secrets

FAST = 2**10
TABLES = ("meta", "accounts", "records", "leases", "schema_version")


def _fingerprint(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table with its row version (xmin): proof that nothing was written."""
    with psycopg.connect(url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " ORDER BY tablename"
            )
        ]
        return {
            table: conn.execute(f"SELECT xmin::text, * FROM {table} ORDER BY 2".encode()).fetchall()
            for table in tables
        }


def _version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        assert row is not None
        return int(row[0])


async def _make(url: str, tmp_path: Path, **kwargs: object) -> PostgresStore:
    store = PostgresStore(url, tmp_path, scrypt_n=FAST, **kwargs)
    await store.open()
    await store.save(ALICE, full_changes(), sync_tokens={"client": "s1"})
    await store.close()
    return store


async def test_passphrase_store_reopens(postgres_url: str, tmp_path: Path) -> None:
    await _make(postgres_url, tmp_path, passphrase="correct horse")
    store = PostgresStore(postgres_url, tmp_path, passphrase="correct horse")
    await store.open()
    assert await store.get_sync_token(ALICE, "client") == "s1"
    assert await store.backend.key_kind() == "passphrase"
    await store.close()
    assert not (tmp_path / "store.key").exists()


@pytest.mark.parametrize("passphrase", ["wrong", None])
async def test_wrong_or_missing_passphrase_is_refused_before_any_write(
    postgres_url: str, tmp_path: Path, passphrase: str | None
) -> None:
    await _make(postgres_url, tmp_path, passphrase="correct horse")
    before = _fingerprint(postgres_url)
    assert set(before) == set(TABLES)
    store = PostgresStore(postgres_url, tmp_path, passphrase=passphrase)
    with pytest.raises(WrongPassphrase) as error:
        await store.open()
    assert "\n" not in str(error.value), "one clear line"
    assert _fingerprint(postgres_url) == before


async def test_a_fresh_database_gets_the_whole_schema(postgres_url: str, tmp_path: Path) -> None:
    await _make(postgres_url, tmp_path, use_keyring=False)
    assert _version(postgres_url) == len(MIGRATIONS)
    assert set(_fingerprint(postgres_url)) == set(TABLES)


def _add_note_column(conn: Conn) -> None:
    conn.execute("ALTER TABLE accounts ADD COLUMN note TEXT")


async def test_migrates_to_a_later_version(postgres_url: str, tmp_path: Path) -> None:
    await _make(postgres_url, tmp_path, use_keyring=False)
    later = [*MIGRATIONS, ("a note per account", _add_note_column)]
    store = PostgresStore(postgres_url, tmp_path, use_keyring=False, migrations=later)
    await store.open()
    assert await store.get_sync_token(ALICE, "client") == "s1"
    assert await store.load_snapshot(ALICE) is not None
    await store.close()
    assert _version(postgres_url) == len(later)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SELECT note FROM accounts")  # the column exists


async def test_newer_schema_is_refused_untouched(postgres_url: str, tmp_path: Path) -> None:
    await _make(postgres_url, tmp_path, use_keyring=False)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
    before = _fingerprint(postgres_url)
    with pytest.raises(MigrationError, match="newer e2eproxy"):
        await PostgresStore(postgres_url, tmp_path, use_keyring=False).open()
    assert _fingerprint(postgres_url) == before


async def test_failed_migration_leaves_previous_version(postgres_url: str, tmp_path: Path) -> None:
    await _make(postgres_url, tmp_path, use_keyring=False)

    def broken(conn: Conn) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    store = PostgresStore(
        postgres_url, tmp_path, use_keyring=False, migrations=[*MIGRATIONS, ("x", broken)]
    )
    with pytest.raises(MigrationError, match=f"migration {len(MIGRATIONS) + 1}"):
        await store.open()
    assert _version(postgres_url) == len(MIGRATIONS)
    assert "half_done" not in _fingerprint(postgres_url)


async def test_instances_created_at_once_share_one_key(postgres_url: str, tmp_path: Path) -> None:
    stores = [
        PostgresStore(postgres_url, tmp_path, passphrase="pw", scrypt_n=FAST) for _ in range(3)
    ]
    await asyncio.gather(*(store.open() for store in stores))
    await stores[0].put_secret(ALICE, "access_token", "syt_a")
    assert [await s.get_secret(ALICE, "access_token") for s in stores] == ["syt_a"] * 3
    for store in stores:
        await store.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM meta").fetchone() == (2,)


async def test_tampered_or_swapped_values_are_refused(postgres_url: str, tmp_path: Path) -> None:
    store = PostgresStore(postgres_url, tmp_path, use_keyring=False)
    await store.open()
    await store.put_secret(ALICE, "access_token", "syt_alice")
    await store.put_secret(BOB, "access_token", "syt_bob")
    with psycopg.connect(postgres_url) as conn:
        (pos_a, value_a), (pos_b, value_b) = conn.execute(
            "SELECT pos, value FROM records WHERE kind = 'secret' ORDER BY pos"
        ).fetchall()
        conn.execute("UPDATE records SET value = %s WHERE pos = %s", (value_b, pos_a))
        conn.execute("UPDATE records SET value = %s WHERE pos = %s", (value_a, pos_b))
    with pytest.raises(StoreCorrupt):
        await store.get_secret(ALICE, "access_token")
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE records SET value = %s WHERE pos = %s", (value_a[:-1] + b"!", pos_a))
    with pytest.raises(StoreCorrupt, match="integrity"):
        await store.get_secret(ALICE, "access_token")
    await store.close()


async def test_nothing_secret_in_the_clear(postgres_url: str, tmp_path: Path) -> None:
    store = PostgresStore(postgres_url, tmp_path, use_keyring=False)
    await store.open()
    needles = await save_secrets(store, tmp_path)
    await store.acquire_lease(ALICE)
    await store.close()
    rows = _fingerprint(postgres_url)
    assert len(rows["records"]) > 10, "the batch is there"
    for table, table_rows in rows.items():
        for row in table_rows:
            for cell in row:
                data = cell if isinstance(cell, bytes) else str(cell).encode()
                for what, needle in needles.items():
                    assert needle not in data, f"{what} found in the clear in {table}"


async def test_open_store_from_config_and_rekey(postgres_url: str, tmp_path: Path) -> None:
    config = StoreConfig(data_dir=tmp_path, use_keyring=False, url=postgres_url)
    store = await open_store(config, "old")
    assert isinstance(store, PostgresStore)
    await store.save(ALICE, Changes(), sync_tokens={"client": "t"})
    from e2eproxy.store import secrets

    await store.backend.rewrap(secrets.PassphraseSource("new", n=FAST))
    assert await store.backend.key_kind() == "passphrase"
    await store.close()
    with pytest.raises(WrongPassphrase):
        await open_store(config, "old")
    store = await open_store(config, "new")
    assert await store.get_sync_token(ALICE, "client") == "t"
    await store.close()
    assert not list(tmp_path.iterdir()), "nothing in the data dir: the store is in PostgreSQL"


async def test_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://me:hunter2@/e2eproxy?host=/nonexistent-e2eproxy-dir"
    with pytest.raises(StoreError, match="cannot connect") as error:
        await PostgresStore(url, tmp_path, passphrase="pw").open()
    assert "hunter2" not in str(error.value)
    assert "me:***@" in str(error.value)
