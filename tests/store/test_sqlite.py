"""What only the SQLite store does: unlock, migrations, tamper detection, nothing in the clear."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from pathlib import Path

import pytest

from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import MigrationError, StoreCorrupt, WrongPassphrase
from e2eproxy.store.migrations import MIGRATIONS
from e2eproxy.store.sqlite import DB_NAME, SqliteStore

from .conftest import ALICE, BOB, FakeKeyring, full_changes, save_secrets

FAST = 2**10


def _fingerprint(data_dir: Path) -> dict[str, str]:
    """Every byte of the database and its WAL: proof that nothing was written."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data_dir.glob(DB_NAME + "*"))
        if not path.name.endswith("-shm") and path.stat().st_size
    }


async def _make(tmp_path: Path, **kwargs: object) -> SqliteStore:
    store = SqliteStore(tmp_path, scrypt_n=FAST, **kwargs)
    await store.open()
    await store.save(ALICE, full_changes(), sync_tokens={"client": "s1"})
    await store.close()
    return store


async def test_passphrase_store_reopens(tmp_path: Path) -> None:
    await _make(tmp_path, passphrase="correct horse")
    store = SqliteStore(tmp_path, passphrase="correct horse")
    await store.open()
    assert await store.get_sync_token(ALICE, "client") == "s1"
    await store.close()


@pytest.mark.parametrize("passphrase", ["wrong", None])
async def test_wrong_or_missing_passphrase_is_refused_before_any_write(
    tmp_path: Path, passphrase: str | None
) -> None:
    await _make(tmp_path, passphrase="correct horse")
    before = _fingerprint(tmp_path)
    store = SqliteStore(tmp_path, passphrase=passphrase)
    with pytest.raises(WrongPassphrase) as error:
        await store.open()
    assert "\n" not in str(error.value), "one clear line"
    assert _fingerprint(tmp_path) == before
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_database_files_readable_by_owner_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, passphrase="pw", scrypt_n=FAST)
    await store.open()
    await store.save(ALICE, full_changes())
    files = sorted(tmp_path.glob(DB_NAME + "*"))
    assert {p.name for p in files} >= {DB_NAME, DB_NAME + "-wal"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    await store.close()
    (tmp_path / DB_NAME).chmod(0o644)  # as an older version left it
    await store.open()
    assert stat.S_IMODE((tmp_path / DB_NAME).stat().st_mode) == 0o600
    await store.close()


async def test_keyring_store(tmp_path: Path) -> None:
    ring = FakeKeyring()
    await _make(tmp_path, keyring_backend=ring)
    assert not (tmp_path / "store.key").exists(), "the keyring is used, no key file"
    store = SqliteStore(tmp_path, keyring_backend=ring)
    await store.open()
    assert await store.list_accounts() == [ALICE]
    await store.close()
    with pytest.raises(WrongPassphrase, match="keyring holds no key"):
        await SqliteStore(tmp_path, keyring_backend=FakeKeyring()).open()


async def test_key_file_store_without_its_key_file(tmp_path: Path) -> None:
    await _make(tmp_path, use_keyring=False)
    (tmp_path / "store.key").unlink()
    with pytest.raises(WrongPassphrase, match="missing"):
        await SqliteStore(tmp_path, use_keyring=False).open()


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    await _make(tmp_path, use_keyring=False)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = _fingerprint(tmp_path)
    with pytest.raises(MigrationError, match="newer e2eproxy"):
        await SqliteStore(tmp_path, use_keyring=False).open()
    assert _fingerprint(tmp_path) == before


async def test_migrates_from_the_first_version(tmp_path: Path) -> None:
    await _make(tmp_path, use_keyring=False, migrations=MIGRATIONS[:1])
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    assert await store.get_sync_token(ALICE, "client") == "s1"
    assert (await store.load_snapshot(ALICE)) is not None
    await store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "records_ts" in indexes
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    await _make(tmp_path, use_keyring=False, migrations=MIGRATIONS[:1])

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    with pytest.raises(MigrationError, match="migration 2"):
        await SqliteStore(
            tmp_path, use_keyring=False, migrations=[MIGRATIONS[0], ("x", broken)]
        ).open()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in tables


async def test_tampered_value_is_reported(tmp_path: Path) -> None:
    await _make(tmp_path, use_keyring=False)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        rowid, value = conn.execute("SELECT rowid, value FROM records WHERE kind='olm'").fetchone()
        conn.execute("UPDATE records SET value = ? WHERE rowid = ?", (value[:-1] + b"!", rowid))
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    with pytest.raises(StoreCorrupt, match="integrity"):
        await store.load_snapshot(ALICE)
    await store.close()


async def test_values_cannot_be_swapped_between_rows(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    await store.put_secret(ALICE, "access_token", "syt_alice")
    await store.put_secret(BOB, "access_token", "syt_bob")
    await store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        rows = conn.execute("SELECT rowid, value FROM records WHERE kind='secret'").fetchall()
        (id_a, value_a), (id_b, value_b) = rows
        conn.execute("UPDATE records SET value = ? WHERE rowid = ?", (value_b, id_a))
        conn.execute("UPDATE records SET value = ? WHERE rowid = ?", (value_a, id_b))
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    with pytest.raises(StoreCorrupt):
        await store.get_secret(ALICE, "access_token")
    await store.close()


async def test_nothing_secret_in_the_clear(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    needles = await save_secrets(store, tmp_path)
    files_open = {p.name: p.read_bytes() for p in tmp_path.glob(DB_NAME + "*")}
    await store.close()
    files_closed = {p.name: p.read_bytes() for p in tmp_path.glob(DB_NAME + "*")}
    assert files_closed, "the database exists"
    for files in (files_open, files_closed):
        for name, data in files.items():
            for what, needle in needles.items():
                assert needle not in data, f"{what} found in the clear in {name}"
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        assert set(json.loads(meta["data_key"])) == {"kind", "params", "nonce", "wrapped"}
        dump = "\n".join(conn.iterdump())
    assert "alice" not in dump and "meet me" not in dump


async def test_batch_with_unpicklable_record_saves_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    changes = full_changes()
    changes.olm_sessions[0].session = None  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        await store.save(ALICE, changes)
    assert await store.list_accounts() == []
    await store.save(ALICE, Changes())
    assert await store.list_accounts() == [ALICE]
    await store.close()


async def test_open_store_from_config(tmp_path: Path) -> None:
    from e2eproxy.config import StoreConfig
    from e2eproxy.store import open_store

    store = await open_store(StoreConfig(data_dir=tmp_path, use_keyring=False), None)
    await store.put_secret(ALICE, "access_token", "t")
    await store.close()
    assert (tmp_path / DB_NAME).exists() and (tmp_path / "store.key").exists()
