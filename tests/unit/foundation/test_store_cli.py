"""`e2eproxy store rekey`: a new passphrase (or key source) for the same store and its data."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from e2eproxy.errors import WrongPassphrase
from e2eproxy.store import AccountKey, SqliteStore
from e2eproxy.types import DeviceId, UserId
from tests.support.processes import child_env, run_cli

ACCOUNT = AccountKey(UserId("@bot:example.org"), DeviceId("DEV"))


def store_cli(
    data_dir: Path, *args: str, passphrase: str | None
) -> subprocess.CompletedProcess[str]:
    key = {} if passphrase is None else {"E2EPROXY_STORE_PASSPHRASE": passphrase}
    return run_cli("store", "rekey", "--data-dir", str(data_dir), *args, env=child_env(**key))


async def _make(data_dir: Path, passphrase: str | None) -> None:
    store = SqliteStore(data_dir, passphrase=passphrase, use_keyring=False)
    await store.open()
    await store.set_sync_token(ACCOUNT, "client", "s42")
    await store.close()


async def _token(data_dir: Path, passphrase: str | None) -> str | None:
    store = SqliteStore(data_dir, passphrase=passphrase, use_keyring=False)
    await store.open()
    try:
        return await store.get_sync_token(ACCOUNT, "client")
    finally:
        await store.close()


def test_new_passphrase_opens_the_same_store_and_the_old_one_no_longer(tmp_path: Path) -> None:
    asyncio.run(_make(tmp_path, "old horse"))
    new = tmp_path / "new-passphrase"
    new.write_text("new battery staple\n")
    done = store_cli(tmp_path, "--new-passphrase-file", str(new), passphrase="old horse")
    assert done.returncode == 0, done.stderr
    assert "staple" not in done.stderr + done.stdout
    assert asyncio.run(_token(tmp_path, "new battery staple")) == "s42"
    with pytest.raises(WrongPassphrase):
        asyncio.run(_token(tmp_path, "old horse"))


def test_wrong_current_passphrase_changes_nothing(tmp_path: Path) -> None:
    asyncio.run(_make(tmp_path, "old horse"))
    new = tmp_path / "new-passphrase"
    new.write_text("new battery staple")
    done = store_cli(tmp_path, "--new-passphrase-file", str(new), passphrase="wrong")
    assert done.returncode == 1 and "wrong store passphrase" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert asyncio.run(_token(tmp_path, "old horse")) == "s42"


def test_from_key_file_to_passphrase_removes_the_key_file(tmp_path: Path) -> None:
    asyncio.run(_make(tmp_path, None))
    assert (tmp_path / "store.key").exists()
    new = tmp_path / "new-passphrase"
    new.write_text("now a passphrase")
    done = store_cli(tmp_path, "--new-passphrase-file", str(new), passphrase=None)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "store.key").exists()
    assert asyncio.run(_token(tmp_path, "now a passphrase")) == "s42"
